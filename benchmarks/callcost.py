"""7. What one callback round trip costs the parent, counted, not timed.

Wall and CPU times (``roundtrip``) move with the machine's state; counts do
not.  Each round-trip variant runs one operation of N1 and one of N2
``precopy_policy`` requests, each in a fresh process under ``valgrind
--tool=callgrind --trace-syscalls=yes`` (the helper is not traced), and
(count(N2) - count(N1)) / (N2 - N1) is what one more round trip costs the
parent: instructions in user space (CPython, the extension, libc) and
system calls by name.  The kernel's share of each system call is not in
the instruction count.

xensr runs with the callout's ``read_ahead`` at 0: every frame then waits
for the loop's poll (blocking) or epoll (asyncio), the path of a helper
that answers more slowly than the parent gets back to its loop.  Reads
ahead would make the counts depend on timing (and under valgrind the
parent is so slow that every read ahead would find its frame).  Valgrind
releases without pidfd_open (3.19) get it from ``csrc/vg_pidfd.c``,
preloaded into the parent.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

from . import purepy, xapi
from .harness import BenchError, CBuild, Group, Result, Series, Target
from .roundtrip import CBFLAGS

# Variant -> how the child process runs it (None: the C parent itself).
VARIANTS = {
    "C floor (blocking read)": None,
    "C floor (poll + read)": None,
    "xensr blocking": "blocking",
    "xensr asyncio": "asyncio",
    "xensr _xc.Callout alone (poll loop)": "callout",
    "pure Python blocking": "py-blocking",
    "pure Python asyncio add_reader": "py-asyncio",
}
SYSCALLS = ("read", "write", "poll", "epoll_wait")
# Served by the vDSO natively; system calls only under valgrind.
VDSO = ("clock_gettime", "gettimeofday", "time", "getcpu")

_COLLECTED = re.compile(r"Collected : (\d+)")
_SYSCALL = re.compile(r"^SYSCALL\[\d+,\d+\]\(\s*\d+\) sys_(\w+)", re.M)


def run(build: CBuild, quick: bool, reps: int) -> Result:
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind not found (apt-get install valgrind)")
    n1, n2 = (100, 400) if quick else (300, 1300)
    helper, cparent, preload = build.bench_helper(), build.cparent(), build.vg_pidfd()
    per_rt: Dict[str, Tuple[float, Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="xensr-callcost-") as tmp:
        for name, mode in VARIANTS.items():
            counts = [_count(tmp, name, mode, n, helper, cparent, preload) for n in (n1, n2)]
            (i1, s1), (i2, s2) = counts
            calls = {k: (s2.get(k, 0) - s1.get(k, 0)) / (n2 - n1)
                     for k in set(s1) | set(s2)}
            per_rt[name] = ((i2 - i1) / (n2 - n1), calls)
    return _result(per_rt, n1, n2)


def _count(tmp: str, name: str, mode: object, n: int, helper: str, cparent: str,
           preload: str) -> Tuple[int, Dict[str, int]]:
    """(instructions, {syscall: count}) of one operation of n requests."""
    log = os.path.join(tmp, "valgrind.log")
    if mode is None:
        target = [cparent, *(["-p"] if "poll" in name else []), helper, "roundtrip", str(n)]
    else:
        target = [sys.executable, "-m", "benchmarks.callcost", "--child", str(mode),
                  helper, str(n)]
    cmd = ["valgrind", "--tool=callgrind", "--trace-syscalls=yes",
           f"--callgrind-out-file={os.path.join(tmp, 'callgrind.out')}",
           f"--log-file={log}", *target]
    env = dict(os.environ, LD_PRELOAD=preload)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(log, errors="replace") as f:
        text = f.read()
    m = _COLLECTED.search(text)
    if proc.returncode or m is None:
        raise BenchError(f"{name} under valgrind failed ({proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}{text[-2000:]}")
    calls: Dict[str, int] = {}
    for sc in _SYSCALL.findall(text):
        calls[sc] = calls.get(sc, 0) + 1
    return int(m.group(1)), calls


def _result(per_rt: Dict[str, Tuple[float, Dict[str, float]]], n1: int, n2: int) -> Result:
    names = list(per_rt)
    instr = Group("user-space instructions per round trip (callgrind)",
                  [Series(k, "instr/rt", [per_rt[k][0]]) for k in names],
                  baseline="C floor (blocking read)")
    sys_series = []
    for k in names:
        calls = {c: v for c, v in per_rt[k][1].items() if c not in VDSO and v >= 0.005}
        shown = [f"{c} {calls.pop(c):.2f}" for c in SYSCALLS if c in calls]
        shown += [f"{c} {v:.2f}" for c, v in sorted(calls.items())]
        total = sum(v for c, v in per_rt[k][1].items() if c not in VDSO and v > 0)
        sys_series.append(Series(k, "calls/rt", [total], note=", ".join(shown)))
    syscalls = Group("system calls per round trip", sys_series,
                     baseline="C floor (blocking read)")
    res = Result("callcost", "what one round trip costs the parent, counted",
                 params={"N1": n1, "N2": n2})
    res.groups += [instr, syscalls]
    for ours, theirs in (("xensr blocking", "pure Python blocking"),
                         ("xensr _xc.Callout alone (poll loop)", "pure Python blocking"),
                         ("xensr asyncio", "pure Python asyncio add_reader")):
        res.targets.append(Target(f"{ours} / {theirs} (instructions)",
                                  instr.ratio(ours, theirs), 1.0, "<="))
    res.notes.append(
        "counts are (operation of N2 requests - operation of N1) / (N2 - N1), one "
        "process each under valgrind; xensr with read_ahead 0 (each frame waits "
        "for the loop); the kernel's work in each system call is not counted "
        "(the roundtrip benchmark's parent CPU time has it); clock reads, which "
        "are system calls only under valgrind (natively the vDSO), are left out "
        "of the system calls")
    return res


# ------------------------------------------------------------ child side


def _child(mode: str, helper: str, n: int) -> None:
    env = purepy.bench_env("roundtrip", n)
    devnull = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    if mode in ("blocking", "asyncio"):
        cb = xapi.PolicyCallbacks()
        if mode == "blocking":
            xapi.save_blocking(devnull, cb, helper=helper, env=env, read_ahead=0)
        else:
            asyncio.run(xapi.save_aio(devnull, cb, helper=helper, env=env, read_ahead=0))
        assert cb.calls == n, cb.calls
    elif mode == "callout":
        h = xapi.BareHandler()
        xapi.callout_save(helper, devnull, CBFLAGS, xapi.env_bytes(env), h, read_ahead=0)
        assert h.requests == n, h.requests
    elif mode == "py-blocking":
        p = purepy.run_blocking(helper, devnull, CBFLAGS, env)
        assert p.frames == n + 2, p.frames
    elif mode == "py-asyncio":
        p = asyncio.run(purepy.run_asyncio(helper, devnull, CBFLAGS, env))
        assert p.frames == n + 2, p.frames
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    os.close(devnull)


def main(argv: List[str]) -> int:
    if len(argv) != 4 or argv[0] != "--child":
        print("usage: python -m benchmarks.callcost --child MODE HELPER N "
              "(run by python -m benchmarks --only callcost)", file=sys.stderr)
        return 2
    _child(argv[1], argv[2], int(argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
