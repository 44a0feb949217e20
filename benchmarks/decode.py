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
from typing import Callable, Dict, List

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
    flood = _Flood(helper, cparent, devnull, loop, n, frames, buffered)
    raw = interleave(flood.variants(), reps)
    series: List[Series] = [
        Series(name, "frames/s", raw[name]["rate"], higher_is_better=True)
        for name in raw
    ]
    label = ("producer batches 64 KiB of frames per write" if buffered
             else "producer writes one frame per write (as the helper does)")
    return Group(f"{label}, N={n}", series, baseline="C floor")


class _Flood:
    """The variants for one producer: each decodes a whole flood of N
    frames and returns the rate in frames per second."""

    def __init__(self, helper: str, cparent: str, devnull: int,
                 loop: asyncio.AbstractEventLoop, n: int, frames: int, buffered: bool):
        self.helper = helper
        self.cparent = cparent
        self.devnull = devnull
        self.loop = loop
        self.n = n
        self.frames = frames
        self.buffered = buffered
        self.env = purepy.bench_env("flood", n, buffered)
        self.envb = xapi.env_bytes(self.env)

    def variants(self) -> Dict[str, Callable[[], Dict[str, float]]]:
        return {
            "C floor": self.c_floor,
            "xensr blocking": self.xensr_blocking,
            "xensr asyncio": self.xensr_asyncio,
            "xensr _xc.Callout alone (poll loop)": self.xensr_callout,
            "pure Python blocking": self.py_blocking,
        }

    def rate(self, seconds: float) -> Dict[str, float]:
        return {"rate": self.frames / seconds}

    def c_floor(self) -> Dict[str, float]:
        out = purepy.run_cparent(self.cparent, self.helper, "flood", self.n,
                                 buffered=self.buffered)
        assert out["frames"] == self.frames, out
        return self.rate(out["ns"] / 1e9)

    def xensr_blocking(self) -> Dict[str, float]:
        cb = xapi.ProgressCallbacks()
        t0 = time.perf_counter()
        xapi.save_blocking(self.devnull, cb, helper=self.helper, env=self.env)
        t = time.perf_counter() - t0
        assert cb.calls == self.n // 2, cb.calls
        return self.rate(t)

    async def _aio(self, cb: "xapi.ProgressCallbacks") -> float:
        t0 = time.perf_counter()
        await xapi.save_aio(self.devnull, cb, helper=self.helper, env=self.env)
        return time.perf_counter() - t0

    def xensr_asyncio(self) -> Dict[str, float]:
        cb = xapi.ProgressCallbacks()
        t = self.loop.run_until_complete(self._aio(cb))
        assert cb.calls == self.n // 2, cb.calls
        return self.rate(t)

    def xensr_callout(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        co = xapi.callout_save(self.helper, self.devnull, CBFLAGS, self.envb,
                               xapi.BareHandler())
        t = time.perf_counter() - t0
        assert co.frames == self.frames, co.frames
        return self.rate(t)

    def py_blocking(self) -> Dict[str, float]:
        t0 = time.perf_counter()
        p = purepy.run_blocking(self.helper, self.devnull, CBFLAGS, self.env)
        t = time.perf_counter() - t0
        assert p.frames == self.frames, p.frames
        return self.rate(t)
