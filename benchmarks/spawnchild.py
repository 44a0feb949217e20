"""The process in which one size of the spawn benchmark runs.

    python -m benchmarks.spawnchild SIZE_MIB REPS HELPER

It maps SIZE_MIB of anonymous memory (small pages: MADV_NOHUGEPAGE, as
a long-lived heap mostly is), writes every page so that all of it is
resident, then times, interleaved, each way of starting the helper and
prints one JSON object on stdout.  Running each size in its own process
gives the memory back between sizes.

Each sample is one trivial operation: start the bench helper in mode
``complete``, read its ``complete`` frame, answer it, reap the helper.
Two xensr variants: the callout's own entry point (``_xc.Callout``:
``spawn``, ``on_readable`` with a handler that answers ``complete``,
exit seen through its pidfd, ``poll_exit``, ``close``), the lowest level
xensr has, and a whole ``xensr.save_domain`` call (adds the Operation
layer: argument checks, helper lookup, environment encoding, result).
The others do the same exchange by hand after starting the helper with
``os.posix_spawn``, ``os.fork`` + ``os.execve`` (libxl's way) or
``subprocess.Popen``.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

from . import xapi
from .harness import interleave

_COMPLETE = struct.pack("=HHii", 10, 10, 0, 0)
_ZERO = struct.pack("=i", 0)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _touch(size: int) -> mmap.mmap:
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        mm.madvise(mmap.MADV_NOHUGEPAGE)
    chunk = 64 << 20
    block = b"\x5a" * chunk
    for off in range(0, size, chunk):
        end = min(off + chunk, size)
        mm[off:end] = block[:end - off]
    return mm


def _serve(rfd: int, wfd: int) -> None:
    """Read the helper's complete frame (12 bytes) and answer it."""
    got = b""
    while len(got) < len(_COMPLETE):
        data = os.read(rfd, 64)
        if not data:
            raise RuntimeError("helper closed its stdout before complete")
        got += data
    if got != _COMPLETE:
        raise RuntimeError(f"unexpected frame {got!r}")
    os.write(wfd, _ZERO)


def main(argv: List[str]) -> int:
    size_mib, reps, helper = int(argv[0]), int(argv[1]), argv[2]
    io_fd = os.open("/dev/null", os.O_WRONLY)
    os.set_inheritable(io_fd, True)  # the helper's IO_FD, as libxl passes it
    spawns = _Spawns(helper, io_fd)
    mm = _touch(size_mib << 20) if size_mib else None
    rss = _rss_mib()
    raw = interleave(spawns.variants(), reps)
    for v in spawns.spawn_call.values():
        del v[: len(v) - reps]  # drop the warm-up
    out = {
        "size_mib": size_mib,
        "rss_mib": rss,
        "total_ms": {k: v["ms"] for k, v in raw.items()},
        "spawn_call_ms": spawns.spawn_call,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    if mm is not None:
        mm.close()
    return 0


class _Spawns:
    """The variants: each starts the bench helper one way, serves its
    complete frame, reaps it, and returns the whole time; the time of the
    spawn call alone goes to spawn_call."""

    def __init__(self, helper: str, io_fd: int):
        self.helper = helper
        self.io_fd = io_fd
        self.env = dict(os.environ, XENSR_BENCH_MODE="complete")
        self.hargv = [helper, "--save-domain", str(io_fd), "-1", "1", "0", "0", "0"]
        self.handler = xapi.BareHandler()
        self.spawn_call: Dict[str, List[float]] = {
            "xensr Callout (low level)": [], "os.posix_spawn": [],
            "os.fork + os.execve": [], "subprocess.Popen": []}

    def variants(self) -> Dict[str, Callable[[], Dict[str, float]]]:
        return {
            "xensr Callout (low level)": self.xensr_callout,
            "xensr save_domain": self.xensr_op,
            "os.posix_spawn": self.posix_spawn,
            "os.fork + os.execve": self.fork_exec,
            "subprocess.Popen": self.popen,
        }

    def finish(self, name: str, pid: int, fds: Tuple[int, int, int, int],
               t0: float, t1: float, t2: float) -> Dict[str, float]:
        """Our side of a hand-spawned helper: close its ends, serve, reap."""
        r0, w0, r1, w1 = fds
        os.close(r0)
        os.close(w1)
        try:
            _serve(r1, w0)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(r1)
            os.close(w0)
        t3 = time.perf_counter()
        assert status == 0, status
        self.spawn_call[name].append((t2 - t1) * 1e3)
        return {"ms": (t3 - t0) * 1e3}

    def posix_spawn(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        r0, w0 = os.pipe()  # helper's stdin: it reads r0, we write w0
        r1, w1 = os.pipe()  # helper's stdout: it writes w1, we read r1
        t1 = time.perf_counter()
        pid = os.posix_spawn(self.helper, self.hargv, self.env, file_actions=[
            (os.POSIX_SPAWN_DUP2, r0, 0), (os.POSIX_SPAWN_DUP2, w1, 1)])
        t2 = time.perf_counter()
        return self.finish("os.posix_spawn", pid, (r0, w0, r1, w1), t0, t1, t2)

    def fork_exec(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        r0, w0 = os.pipe()
        r1, w1 = os.pipe()
        t1 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # child: only dup2 and exec, then leave
            try:
                os.dup2(r0, 0)
                os.dup2(w1, 1)
                os.execve(self.helper, self.hargv, self.env)
            finally:
                os._exit(127)
        t2 = time.perf_counter()
        return self.finish("os.fork + os.execve", pid, (r0, w0, r1, w1), t0, t1, t2)

    def popen(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        p = subprocess.Popen(self.hargv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             pass_fds=(self.io_fd,), env=self.env, bufsize=0)
        t1 = time.perf_counter()
        try:
            _serve(p.stdout.fileno(), p.stdin.fileno())  # type: ignore[union-attr]
            status = p.wait()
        finally:
            p.stdin.close()  # type: ignore[union-attr]
            p.stdout.close()  # type: ignore[union-attr]
        t2 = time.perf_counter()
        assert status == 0, status
        self.spawn_call["subprocess.Popen"].append((t1 - t0) * 1e3)
        return {"ms": (t2 - t0) * 1e3}

    def xensr_callout(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        envb = xapi.env_bytes(self.env)  # as posix_spawn converts its env each call
        xapi.callout_save(self.helper, self.io_fd, 0, envb, self.handler,
                          spawn_ms=self.spawn_call["xensr Callout (low level)"])
        return {"ms": (time.perf_counter() - t0) * 1e3}

    def xensr_op(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        xapi.save_blocking(self.io_fd, None, helper=self.helper, env=self.env)
        return {"ms": (time.perf_counter() - t0) * 1e3}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
