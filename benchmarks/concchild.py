"""The process in which one run of the concurrency benchmark happens.

    python -m benchmarks.concchild N KIND TRACE ARG

Starts N saves at once with ``xensr.aio.save_domain`` in one thread and
one event loop.  Every operation's ``suspend`` callback (a coroutine)
waits at a barrier until all N operations have reached it, so at that
moment all N helpers are running and all N operations are in flight: the
parent's resident memory, open fds and (with TRACE=1) tracemalloc's
traced Python memory are read there and compared to the figures taken
just before the operations started.

KIND is ``simhost`` (small PV domains of a ``xensr.testing.SimulatedHost``
whose state directory is ARG, holding at least N + 1 domains, saved
non-live by xensr's own helper, which calls ``suspend`` before the last
round) or ``bench`` (ARG is the bench helper, run in mode ``hold``:
starting line, one ``suspend`` request, ``complete``).  Prints one JSON
object.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
import tracemalloc
from typing import Any, Dict, List, Optional

from . import xapi


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raise SystemExit(f"RLIMIT_NOFILE {soft} is below the {need} fds needed")


class Barrier:
    """suspend() callbacks park here until every operation has arrived."""

    def __init__(self, n: int, trace: bool) -> None:
        self.n = n
        self.arrived = 0
        self.trace = trace
        self.event = asyncio.Event()
        self.figures: Dict[str, float] = {}

    def callbacks(self) -> "BarrierCallbacks":
        return BarrierCallbacks(self)

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.n:
            self.figures["rss_kib"] = _rss_kib()
            self.figures["fds"] = _nfds()
            if self.trace:
                self.figures["traced"] = tracemalloc.get_traced_memory()[0]
            self.event.set()


class BarrierCallbacks:
    __slots__ = ("barrier",)

    def __init__(self, barrier: Barrier) -> None:
        self.barrier = barrier

    async def suspend(self) -> bool:
        self.barrier.arrive()
        await self.barrier.event.wait()
        return True


async def _run(n: int, kind: str, trace: bool, io_fd: int,
               domids: List[int], helper: Optional[str],
               env: Dict[str, str]) -> Dict[str, Any]:
    # One operation first, so that lazy imports and first-use allocations
    # are not charged to the measured ones.
    warm = Barrier(1, False)
    await xapi.save_aio(io_fd, warm.callbacks(), helper=helper, env=env,
                        domid=domids[-1])

    barrier = Barrier(n, trace)
    gc.collect()
    if trace:
        tracemalloc.start()
    rss0, fds0 = _rss_kib(), _nfds()
    traced0 = tracemalloc.get_traced_memory()[0] if trace else 0
    t0 = time.perf_counter()
    results = await asyncio.gather(*(
        xapi.save_aio(io_fd, barrier.callbacks(), helper=helper, env=env, domid=d)
        for d in domids[:n]
    ))
    wall = time.perf_counter() - t0
    if trace:
        tracemalloc.stop()
    assert len(results) == n
    assert barrier.arrived == n, barrier.arrived
    gc.collect()
    out: Dict[str, Any] = {
        "n": n,
        "kind": kind,
        "wall_s": wall,
        "rss_delta_kib": barrier.figures["rss_kib"] - rss0,
        "fds_delta": barrier.figures["fds"] - fds0,
        "fds_after_delta": _nfds() - fds0,
    }
    if trace:
        out["traced_delta_bytes"] = barrier.figures["traced"] - traced0
    return out


def main(argv: List[str]) -> int:
    n, kind, trace = int(argv[0]), argv[1], argv[2] == "1"
    raise_nofile(8 * n + 256)
    io_fd = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    if kind == "simhost":
        from xensr.testing import SimulatedHost

        with SimulatedHost(argv[3], auto_suspend=True) as host:
            domids = sorted(host.domain_ids())[:n + 1]
            if len(domids) < n + 1:
                raise SystemExit(f"{argv[3]} holds {len(domids)} domains, "
                                 f"{n + 1} needed")
            out = asyncio.run(_run(n, kind, trace, io_fd, domids, None,
                                   dict(host.env)))
    else:
        helper = argv[3]
        env = dict(os.environ, XENSR_BENCH_MODE="hold")
        out = asyncio.run(_run(n, kind, trace, io_fd, list(range(1, n + 2)),
                               helper, env))
    os.close(io_fd)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
