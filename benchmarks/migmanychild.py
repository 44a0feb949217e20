"""One run of the migrate-many benchmark, in a fresh process.

    python -m benchmarks.migmanychild N MODE DIR

Makes two simulated hosts under DIR with N small guests on the first,
then migrates them all to the second, senders and receivers on one
asyncio loop in this thread, over socket pairs: MODE ``concurrent`` (all
at once) or ``sequential`` (one after the other).  A task samples this
process's RSS and open fds every 10 ms.  Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

DOMAIN_MIB = 1
DIRTY_PAGES = 32


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _main(n: int, mode: str, tmp: Path) -> Dict[str, Any]:
    import xensr
    from xensr.migrate import aio_migrate_domain, aio_receive_domain
    from xensr.testing import SimulatedHost

    helper = xensr.helper_path()
    a = SimulatedHost(tmp / "host-a")
    b = SimulatedHost(tmp / "host-b")
    doms = [a.create_domain(DOMAIN_MIB, name=f"g{i}", dirty_pages=DIRTY_PAGES)
            for i in range(n)]
    env_a, env_b = a.env, b.env

    async def one(domid: int) -> int:
        s, r = socket.socketpair()
        try:
            sent, _ = await asyncio.gather(
                aio_migrate_domain(a, domid, s, helper=helper, env=env_a),
                aio_receive_domain(b, r.fileno(), r.fileno(), helper=helper, env=env_b))
        finally:
            s.close()
            r.close()
        return sent.stream_bytes

    peak = {"rss": 0, "fds": 0}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _rss_kib())
            peak["fds"] = max(peak["fds"], _nfds())
            try:
                await asyncio.wait_for(stop.wait(), 0.01)
            except asyncio.TimeoutError:
                pass

    gc.collect()
    rss0, fds0 = _rss_kib(), _nfds()
    sampler = asyncio.ensure_future(sample())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    if mode == "concurrent":
        sizes: List[int] = list(await asyncio.gather(*(one(d) for d in doms)))
    else:
        sizes = [await one(d) for d in doms]
    wall = time.perf_counter() - t0
    stop.set()
    await sampler
    fds_after = _nfds()
    moved = len(b.domain_ids())
    left = len(a.domain_ids())
    a.close()
    b.close()
    if moved != n or left:
        raise RuntimeError(f"{moved} of {n} guests arrived, {left} left on the source")
    return {"n": n, "mode": mode, "wall_s": wall, "rss_delta_kib": peak["rss"] - rss0,
            "fds_delta": peak["fds"] - fds0, "fds_after_delta": fds_after - fds0,
            "stream_bytes": sum(sizes)}


def main(argv: List[str]) -> int:
    n, mode, tmp = int(argv[0]), argv[1], Path(argv[2])
    if mode not in ("concurrent", "sequential"):
        raise SystemExit(f"unknown mode {mode!r}")
    out = asyncio.run(_main(n, mode, tmp))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
