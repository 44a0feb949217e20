"""The few xensr calls the benchmarks make, in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import select
from typing import Any, Dict, Iterator, List, Optional

import xensr
import xensr.aio

BENCH_DOMID = 1


class PolicyCallbacks:
    """Answers every precopy_policy request with "continue" (0)."""

    def __init__(self) -> None:
        self.calls = 0

    def precopy_policy(self, *args: Any) -> int:
        self.calls += 1
        return 0

    def suspend(self) -> bool:
        return True


class ProgressCallbacks:
    """A progress callback that only counts."""

    def __init__(self) -> None:
        self.calls = 0

    def progress(self, *args: Any) -> None:
        self.calls += 1


def save_blocking(fd: int, callbacks: Any, *, helper: Optional[str],
                  env: Dict[str, str], domid: int = BENCH_DOMID,
                  live: bool = False, read_ahead: Optional[int] = None) -> Any:
    if read_ahead is None:
        return xensr.save_domain(domid, fd, callbacks, live=live, helper=helper, env=env)
    return _operation(fd, callbacks, helper, env, domid, live, read_ahead).run()


async def save_aio(fd: int, callbacks: Any, *, helper: Optional[str],
                   env: Dict[str, str], domid: int = BENCH_DOMID,
                   live: bool = False, read_ahead: Optional[int] = None) -> Any:
    if read_ahead is None:
        return await xensr.aio.save_domain(domid, fd, callbacks, live=live,
                                           helper=helper, env=env)
    return await xensr.aio.run(
        _operation(fd, callbacks, helper, env, domid, live, read_ahead))


def _operation(fd: int, callbacks: Any, helper: Optional[str], env: Dict[str, str],
               domid: int, live: bool, read_ahead: int) -> Any:
    """save_domain's operation with the callout's reads ahead set (the
    Callout's read_ahead; 0: every frame waits for the loop's poll)."""
    op = xensr.SaveOperation(domid, fd, callbacks, live=live, helper=helper, env=env)
    op._callout.read_ahead = read_ahead
    return op


@contextlib.contextmanager
def quiet_helper_log() -> Iterator[None]:
    """Disable the 'xensr.helper' logger: log frames cost their decoding only."""
    logger = logging.getLogger("xensr.helper")
    old = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = old


# ------------------------------------------------------------------ callout
#
# The callout's own object, _xc.Callout, driven with the life cycle its
# docstring gives (spawn, on_readable while reading, poll_exit on the
# pidfd, close) and a handler of plain methods: xensr's machinery without
# the Operation layer above it, so that the cost of each layer shows.


class BareHandler:
    """msg_* methods for the callout: answer requests, ignore the rest."""

    def __init__(self) -> None:
        self.requests = 0

    def msg_log(self, level: int, errnoval: int, context: str, text: str) -> None:
        pass

    def msg_progress(self, context: str, what: str, done: int, total: int) -> None:
        pass

    def msg_suspend(self) -> int:
        self.requests += 1
        return 1

    def msg_switch_qemu_logdirty(self, domid: int, enable: int) -> int:
        self.requests += 1
        return 0

    def msg_precopy_policy(self, iteration: int, written: int, dirty: int) -> int:
        self.requests += 1
        return 0

    def msg_complete(self, retval: int, errnoval: int) -> int:
        return 0


def env_bytes(env: Dict[str, str]) -> List[bytes]:
    return [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]


def callout_save(helper: str, io_fd: int, cbflags: int, env: List[bytes],
                 handler: Any, domid: int = BENCH_DOMID,
                 spawn_ms: Optional[List[float]] = None,
                 read_ahead: Optional[int] = None) -> Any:
    """One save through _xc.Callout alone; returns the finished Callout.
    With spawn_ms, the duration of the spawn call is appended to it."""
    import time

    from xensr import _xc

    co = _xc.Callout(_xc.DIR_SAVE, cbflags)
    if read_ahead is not None:
        co.read_ahead = read_ahead
    try:
        t0 = time.perf_counter()
        co.spawn(helper, "--save-domain", io_fd, -1, [domid, 0, cbflags, 0], env)
        if spawn_ms is not None:
            spawn_ms.append((time.perf_counter() - t0) * 1e3)
        p = select.poll()
        p.register(co.stdout_fd, select.POLLIN)
        while co.reading:
            p.poll()
            while co.on_readable(handler):
                pass
        p.unregister(co.stdout_fd)
        p.register(co.pidfd, select.POLLIN)
        while not co.poll_exit():
            p.poll()
        if not co.completed or co.returncode != 0:
            raise RuntimeError(f"helper ended with status {co.returncode}")
        return co
    finally:
        co.close()
