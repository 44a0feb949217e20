"""2. Frame decoding and dispatch under a log/progress flood.

The bench helper sends N frames alternating a log line (60 bytes of text)
and a progress report, then ``complete``.  Every variant decodes each frame
strictly and hands it to a handler that does nothing; the figure is frames
per second over the whole operation.

Two producers: one ``write`` per frame, as the real helper does (a fast
consumer is then paced by the producer), and a producer that batches
frames 64 KiB at a time, so that the consumer's own decoding speed shows.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Dict, List

from . import purepy, xapi
from .harness import CBuild, Group, Result, Series, Target, interleave

CBFLAGS = (1 << 11) | (1 << 3)


def run(build: CBuild, quick: bool, reps: int) -> Result:
    n = 100_000 if quick else 1_000_000
    helper = build.bench_helper()
    cparent = build.cparent()
    devnull = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    loop = asyncio.new_event_loop()
    frames = n + 2  # starting line and complete

    res = Result("decode", "frame decoding and dispatch (log/progress flood)",
                 params={"N": n, "reps": reps})
    try:
        with xapi.quiet_helper_log():
            for buffered in (False, True):
                res.groups.append(_one(helper, cparent, devnull, loop, n,
                                       frames, buffered, reps))
    finally:
        loop.close()
        os.close(devnull)

    for g, what in zip(res.groups, ("one write per frame", "batched producer")):
        res.targets.append(Target(
            f"xensr blocking / C floor rate ({what})",
            g.ratio("xensr blocking"), 0.5, ">="))
        res.targets.append(Target(
            f"xensr blocking / pure Python rate ({what})",
            g.ratio("xensr blocking", "pure Python blocking"), 5.0, ">="))
    res.notes.append(
        "rates are frames/s over the whole operation (spawn to reap); xensr's "
        "log frames go to the 'xensr.helper' logger, disabled for the run, and "
        "progress to a no-op callback; '_xc.Callout alone' is the callout object "
        "with plain no-op handler methods (no Operation layer)")
    return res


def _one(helper: str, cparent: str, devnull: int, loop: asyncio.AbstractEventLoop,
         n: int, frames: int, buffered: bool, reps: int) -> Group:
    env = purepy.bench_env("flood", n, buffered)

    def rate(seconds: float) -> Dict[str, float]:
        return {"rate": frames / seconds}

    def c_floor() -> Dict[str, float]:
        out = purepy.run_cparent(cparent, helper, "flood", n, buffered=buffered)
        assert out["frames"] == frames, out
        return rate(out["ns"] / 1e9)

    def xensr_blocking() -> Dict[str, float]:
        cb = xapi.ProgressCallbacks()
        t0 = time.perf_counter()
        xapi.save_blocking(devnull, cb, helper=helper, env=env)
        t = time.perf_counter() - t0
        assert cb.calls == n // 2, cb.calls
        return rate(t)

    async def _aio(cb: "xapi.ProgressCallbacks") -> float:
        t0 = time.perf_counter()
        await xapi.save_aio(devnull, cb, helper=helper, env=env)
        return time.perf_counter() - t0

    def xensr_asyncio() -> Dict[str, float]:
        cb = xapi.ProgressCallbacks()
        t = loop.run_until_complete(_aio(cb))
        assert cb.calls == n // 2, cb.calls
        return rate(t)

    envb = xapi.env_bytes(env)

    def xensr_callout() -> Dict[str, float]:
        t0 = time.perf_counter()
        co = xapi.callout_save(helper, devnull, CBFLAGS, envb, xapi.BareHandler())
        t = time.perf_counter() - t0
        assert co.frames == frames, co.frames
        return rate(t)

    def py_blocking() -> Dict[str, float]:
        t0 = time.perf_counter()
        p = purepy.run_blocking(helper, devnull, CBFLAGS, env)
        t = time.perf_counter() - t0
        assert p.frames == frames, p.frames
        return rate(t)

    variants = {
        "C floor": c_floor,
        "xensr blocking": xensr_blocking,
        "xensr asyncio": xensr_asyncio,
        "xensr _xc.Callout alone (poll loop)": xensr_callout,
        "pure Python blocking": py_blocking,
    }
    raw = interleave(variants, reps)
    series: List[Series] = [
        Series(name, "frames/s", raw[name]["rate"], higher_is_better=True)
        for name in variants
    ]
    label = ("producer batches 64 KiB of frames per write" if buffered
             else "producer writes one frame per write (as the helper does)")
    return Group(f"{label}, N={n}", series, baseline="C floor")
