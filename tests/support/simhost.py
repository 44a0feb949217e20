"""Save and restore simulated domains through a helper (tests of the simulated
host, of the helper and of the stream use it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from tests.support.parent import (
    CBFLAGS_RESTORE_PLAIN, CBFLAGS_RESTORE_REMUS, CBFLAGS_SAVE_PLAIN,
    CBFLAGS_SAVE_REMUS, Replies, Transcript, restore_args, run_helper, save_args,
)

XCFLAGS_LIVE = 1
XCFLAGS_DEBUG = 2


def save_to_file(helper: Path, host, domid: int, path: Path, *, live: bool = False,
                 stream_type: int = 0, checkpoints: int = 0, xcflags: Optional[int] = None,
                 cbflags: Optional[int] = None, env: Optional[Dict[str, str]] = None,
                 **kw: Any) -> Tuple[Transcript, bytes]:
    """Save ``domid`` into ``path``; return the transcript and the stream."""
    if xcflags is None:
        xcflags = XCFLAGS_LIVE if live else 0
    if cbflags is None:
        cbflags = CBFLAGS_SAVE_PLAIN if stream_type == 0 else CBFLAGS_SAVE_REMUS
    kw.setdefault("timeout", 60)
    kw.setdefault("replies", Replies(checkpoints=checkpoints))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        t = run_helper(helper, "save", save_args(domid, xcflags, cbflags, stream_type),
                       io_fd=fd, env=env if env is not None else host.env, **kw)
    finally:
        os.close(fd)
    return t, Path(path).read_bytes()


def restore_from_file(helper: Path, host, domid: int, path: Path, *, stream_type: int = 0,
                      cbflags: Optional[int] = None, store_evtchn: int = 1,
                      console_evtchn: int = 2, store_domid: int = 0, console_domid: int = 0,
                      env: Optional[Dict[str, str]] = None, **kw: Any) -> Transcript:
    if cbflags is None:
        cbflags = CBFLAGS_RESTORE_PLAIN if stream_type == 0 else CBFLAGS_RESTORE_REMUS
    kw.setdefault("timeout", 60)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return run_helper(helper, "restore",
                          restore_args(domid, store_evtchn, store_domid, console_evtchn,
                                       console_domid, cbflags, stream_type),
                          io_fd=fd, env=env if env is not None else host.env, **kw)
    finally:
        os.close(fd)


def assert_completed(t: Transcript, retval: int = 0) -> None:
    """The helper ran to the end: complete(retval) and exit status 0."""
    assert t.protocol_error is None, t.summary()
    assert t.timed_out is None, t.summary()
    assert t.complete is not None, t.summary()
    assert t.complete["retval"] == retval, t.summary()
    assert t.returncode == 0, t.summary()
