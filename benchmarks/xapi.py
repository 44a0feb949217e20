"""The few xensr calls the benchmarks make, in one place."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, Optional

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


def save_blocking(fd: int, callbacks: Any, *, helper: str,
                  env: Dict[str, str], domid: int = BENCH_DOMID,
                  live: bool = False) -> Any:
    return xensr.save_domain(domid, fd, callbacks, live=live, helper=helper, env=env)


async def save_aio(fd: int, callbacks: Any, *, helper: Optional[str],
                   env: Dict[str, str], domid: int = BENCH_DOMID,
                   live: bool = False) -> Any:
    return await xensr.aio.save_domain(domid, fd, callbacks, live=live,
                                       helper=helper, env=env)


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
