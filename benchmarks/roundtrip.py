"""1. Callback round trip: the helper asks, Python answers, the helper goes on.

The bench helper sends its starting line, then N synchronous
``precopy_policy`` requests, each waiting for its reply, then ``complete``.
Each variant times one whole operation (spawn to reap) and divides by N;
with N in the thousands the spawn is a small share of it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

from . import purepy, xapi
from .harness import CBuild, Group, Result, Series, Target, cpu_seconds, interleave

CBFLAGS = (1 << 11) | (1 << 3)  # precopy_policy | suspend


def run(build: CBuild, quick: bool, reps: int) -> Result:
    n = 2000 if quick else 20000
    bench = _RoundTrips(build, n)
    try:
        raw = interleave(bench.variants(), reps)
    finally:
        bench.close()
    return _result(raw, n, reps)


class _RoundTrips:
    """The variants: each runs one whole operation of N round trips and
    returns wall and parent CPU time per round trip."""

    def __init__(self, build: CBuild, n: int):
        self.n = n
        self.helper = build.bench_helper()
        self.cparent = build.cparent()
        self.env = purepy.bench_env("roundtrip", n)
        self.envb = xapi.env_bytes(self.env)
        self.devnull = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
        self.loop = asyncio.new_event_loop()

    def variants(self) -> Dict[str, Callable[[], Dict[str, float]]]:
        return {
            "C floor (blocking read)": self.c_floor,
            "C floor (poll + read)": self.c_floor_poll,
            "xensr blocking": self.xensr_blocking,
            "xensr asyncio": self.xensr_asyncio,
            "xensr blocking, no read-ahead": self.xensr_blocking_na,
            "xensr asyncio, no read-ahead": self.xensr_asyncio_na,
            "xensr _xc.Callout alone (poll loop)": self.xensr_callout,
            "pure Python blocking": self.py_blocking,
            "pure Python asyncio add_reader": self.py_asyncio,
        }

    def close(self) -> None:
        self.loop.close()
        os.close(self.devnull)

    def per_rt(self, seconds: float, cpu: float) -> Dict[str, float]:
        return {"us": seconds * 1e6 / self.n, "cpu_us": cpu * 1e6 / self.n}

    def c_floor(self, poll: bool = False) -> Dict[str, float]:
        out = purepy.run_cparent(self.cparent, self.helper, "roundtrip", self.n, poll=poll)
        assert out["requests"] == self.n + 1, out
        return self.per_rt(out["ns"] / 1e9, out["cpu_ns"] / 1e9)

    def c_floor_poll(self) -> Dict[str, float]:
        return self.c_floor(poll=True)

    def xensr_blocking(self, read_ahead: Optional[int] = None) -> Dict[str, float]:
        cb = xapi.PolicyCallbacks()
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        xapi.save_blocking(self.devnull, cb, helper=self.helper, env=self.env,
                           read_ahead=read_ahead)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert cb.calls == self.n, cb.calls
        return self.per_rt(t, c)

    def xensr_blocking_na(self) -> Dict[str, float]:
        return self.xensr_blocking(read_ahead=0)

    async def _aio(self, cb: "xapi.PolicyCallbacks",
                   read_ahead: Optional[int]) -> Tuple[float, float]:
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        await xapi.save_aio(self.devnull, cb, helper=self.helper, env=self.env,
                            read_ahead=read_ahead)
        return time.perf_counter() - t0, cpu_seconds() - c0

    def xensr_asyncio(self, read_ahead: Optional[int] = None) -> Dict[str, float]:
        cb = xapi.PolicyCallbacks()
        t, c = self.loop.run_until_complete(self._aio(cb, read_ahead))
        assert cb.calls == self.n, cb.calls
        return self.per_rt(t, c)

    def xensr_asyncio_na(self) -> Dict[str, float]:
        return self.xensr_asyncio(read_ahead=0)

    def xensr_callout(self) -> Dict[str, float]:
        h = xapi.BareHandler()
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        xapi.callout_save(self.helper, self.devnull, CBFLAGS, self.envb, h)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert h.requests == self.n, h.requests
        return self.per_rt(t, c)

    def py_blocking(self) -> Dict[str, float]:
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        p = purepy.run_blocking(self.helper, self.devnull, CBFLAGS, self.env)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert p.frames == self.n + 2, p.frames
        return self.per_rt(t, c)

    async def _py_aio(self) -> Tuple[float, float]:
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        p = await purepy.run_asyncio(self.helper, self.devnull, CBFLAGS, self.env)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert p.frames == self.n + 2, p.frames
        return t, c

    def py_asyncio(self) -> Dict[str, float]:
        return self.per_rt(*self.loop.run_until_complete(self._py_aio()))


def _result(raw: Dict[str, Dict[str, List[float]]], n: int, reps: int) -> Result:
    names = list(raw)
    series = [Series(name, "us/rt", raw[name]["us"]) for name in names]
    group = Group(f"round trip, N={n} requests per operation: wall time", series,
                  baseline="C floor (blocking read)")
    cpu = Group("parent CPU time (user + system) per round trip",
                [Series(name, "us/rt", raw[name]["cpu_us"]) for name in names],
                baseline="C floor (blocking read)")
    res = Result("roundtrip", "callback round trip (helper asks, Python answers)",
                 params={"N": n, "reps": reps})
    res.groups += [group, cpu]
    res.targets.append(Target(
        "xensr blocking / C floor", group.ratio("xensr blocking"), 1.1, "<="))
    res.targets.append(Target(
        "xensr asyncio / C floor", group.ratio("xensr asyncio"), 1.4, "<="))
    # Each xensr row against what a user would write instead, in wall
    # time and in parent CPU: the callout must cost less.
    for g, what in ((group, "wall"), (cpu, "CPU")):
        for ours, theirs in (("xensr blocking", "pure Python blocking"),
                             ("xensr blocking, no read-ahead", "pure Python blocking"),
                             ("xensr _xc.Callout alone (poll loop)", "pure Python blocking"),
                             ("xensr asyncio", "pure Python asyncio add_reader"),
                             ("xensr asyncio, no read-ahead",
                              "pure Python asyncio add_reader")):
            res.targets.append(Target(
                f"{ours} / {theirs} ({what})", g.ratio(ours, theirs), 1.0, "<="))
    res.notes.append(
        "each sample is one whole operation (spawn, starting line, N requests, "
        "complete, reap) divided by N; the C floor is the same bench helper "
        "driven by a C parent over the same two pipes; '_xc.Callout alone' drives "
        "the callout object with a bare poll loop and plain handler methods (no "
        "Operation layer), to show what each layer costs; 'no read-ahead' sets the "
        "callout's read_ahead to 0, so that every frame waits for the loop's "
        "poll/epoll (the path of a helper that answers more slowly than the parent "
        "gets back to its loop); `python -m benchmarks --only callcost` counts "
        "the instructions of each row's round trip")
    return res
