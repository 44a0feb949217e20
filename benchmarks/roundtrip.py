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
from typing import Dict, Tuple

from . import purepy, xapi
from .harness import CBuild, Group, Result, Series, Target, cpu_seconds, interleave

CBFLAGS = (1 << 11) | (1 << 3)  # precopy_policy | suspend


def run(build: CBuild, quick: bool, reps: int) -> Result:
    n = 2000 if quick else 20000
    helper = build.bench_helper()
    cparent = build.cparent()
    env = purepy.bench_env("roundtrip", n)
    devnull = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    loop = asyncio.new_event_loop()

    def per_rt(seconds: float, cpu: float) -> Dict[str, float]:
        return {"us": seconds * 1e6 / n, "cpu_us": cpu * 1e6 / n}

    def c_floor() -> Dict[str, float]:
        out = purepy.run_cparent(cparent, helper, "roundtrip", n)
        assert out["requests"] == n + 1, out
        return per_rt(out["ns"] / 1e9, out["cpu_ns"] / 1e9)

    def c_floor_poll() -> Dict[str, float]:
        out = purepy.run_cparent(cparent, helper, "roundtrip", n, poll=True)
        assert out["requests"] == n + 1, out
        return per_rt(out["ns"] / 1e9, out["cpu_ns"] / 1e9)

    def xensr_blocking() -> Dict[str, float]:
        cb = xapi.PolicyCallbacks()
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        xapi.save_blocking(devnull, cb, helper=helper, env=env)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert cb.calls == n, cb.calls
        return per_rt(t, c)

    async def _aio(cb: "xapi.PolicyCallbacks") -> Tuple[float, float]:
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        await xapi.save_aio(devnull, cb, helper=helper, env=env)
        return time.perf_counter() - t0, cpu_seconds() - c0

    def xensr_asyncio() -> Dict[str, float]:
        cb = xapi.PolicyCallbacks()
        t, c = loop.run_until_complete(_aio(cb))
        assert cb.calls == n, cb.calls
        return per_rt(t, c)

    envb = xapi.env_bytes(env)

    def xensr_callout() -> Dict[str, float]:
        h = xapi.BareHandler()
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        xapi.callout_save(helper, devnull, CBFLAGS, envb, h)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert h.requests == n, h.requests
        return per_rt(t, c)

    def py_blocking() -> Dict[str, float]:
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        p = purepy.run_blocking(helper, devnull, CBFLAGS, env)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert p.frames == n + 2, p.frames
        return per_rt(t, c)

    async def _py_aio() -> Tuple[float, float]:
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        p = await purepy.run_asyncio(helper, devnull, CBFLAGS, env)
        t = time.perf_counter() - t0
        c = cpu_seconds() - c0
        assert p.frames == n + 2, p.frames
        return t, c

    def py_asyncio() -> Dict[str, float]:
        return per_rt(*loop.run_until_complete(_py_aio()))

    variants = {
        "C floor (blocking read)": c_floor,
        "C floor (poll + read)": c_floor_poll,
        "xensr blocking": xensr_blocking,
        "xensr asyncio": xensr_asyncio,
        "xensr _xc.Callout alone (poll loop)": xensr_callout,
        "pure Python blocking": py_blocking,
        "pure Python asyncio add_reader": py_asyncio,
    }
    try:
        raw = interleave(variants, reps)
    finally:
        loop.close()
        os.close(devnull)

    series = [Series(name, "us/rt", raw[name]["us"]) for name in variants]
    group = Group(f"round trip, N={n} requests per operation: wall time", series,
                  baseline="C floor (blocking read)")
    cpu = Group("parent CPU time (user + system) per round trip",
                [Series(name, "us/rt", raw[name]["cpu_us"]) for name in variants],
                baseline="C floor (blocking read)")
    res = Result("roundtrip", "callback round trip (helper asks, Python answers)",
                 params={"N": n, "reps": reps})
    res.groups += [group, cpu]
    res.targets.append(Target(
        "xensr blocking / C floor", group.ratio("xensr blocking"), 1.1, "<="))
    res.targets.append(Target(
        "xensr asyncio / C floor", group.ratio("xensr asyncio"), 1.4, "<="))
    res.notes.append(
        "each sample is one whole operation (spawn, starting line, N requests, "
        "complete, reap) divided by N; the C floor is the same bench helper "
        "driven by a C parent over the same two pipes; '_xc.Callout alone' drives "
        "the callout object with a bare poll loop and plain handler methods (no "
        "Operation layer), to show what each layer costs")
    return res
