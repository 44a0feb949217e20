"""Callbacks: what the helper asks the toolstack during a save or restore.

A callbacks object is any object; the methods it has decide which libxc
callbacks the helper installs (the cbflags it is given).  All are optional:

Save:
  ``suspend() -> bool``
      Suspend the guest now (the last round follows).  True: suspended.
      Without one, xensr answers True and libxenguest checks the domain's
      state itself (the test rig's domains suspend on that answer; on real
      Xen the toolstack must have suspended the guest).
  ``switch_qemu_logdirty(domid: int, enable: bool) -> None | bool``
      HVM: turn QEMU's log-dirty tracking on/off.  None/True: done;
      False or an exception: failure.  Without one, xensr answers "done".
  ``precopy_policy(stats: PrecopyStats) -> int``
      Live saves, xensr's helper only: after each precopy round, return a
      :class:`PrecopyDecision` (``XGS_POLICY_*``).
  ``postcopy() -> bool``, ``checkpoint() -> bool``, ``wait_checkpoint()
  -> bool``
      Checkpointed streams (Remus/COLO): resume the guest after a
      checkpoint; True from ``checkpoint`` takes another one.

Restore:
  ``static_data_done(missing: int) -> None | bool``
      Static data (CPUID/MSR policy) received; ``missing`` is a mask of
      ``XGR_SDD_MISSING_*``.  None/True: OK.  Default: OK.
  ``checkpoint() -> int``
      Checkpointed streams: a :class:`CheckpointResult` (True = SUCCESS).
  ``suspend()``, ``postcopy()``, ``wait_checkpoint()`` (COLO): bool, or
      an int (1 OK, 2 failover, other error).

Both:
  ``progress(context: str, doing_what: str, done: int, total: int)``
      libxenguest's progress reports (no reply).

A method may raise: the operation then fails with :class:`CallbackError`
chained to the exception, and the helper is killed.  With :mod:`xensr.aio`
any method may be a coroutine function; with an :class:`~xensr.Operation`
driven by another loop a method may return :data:`DEFERRED` and answer
later with :meth:`~xensr.Operation.reply`.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple, Optional

from . import _constants as C

__all__ = [
    "PrecopyStats",
    "PrecopyDecision",
    "CheckpointResult",
    "DEFERRED",
    "Callbacks",
    "SAVE_CALLBACKS",
    "RESTORE_CALLBACKS",
]


class PrecopyStats(NamedTuple):
    """libxenguest's ``struct precopy_stats`` after a precopy round."""

    iteration: int
    total_written: int
    dirty_count: int


class PrecopyDecision(enum.IntEnum):
    """What ``precopy_policy`` returns (``XGS_POLICY_*``)."""

    ABORT = C.XGS_POLICY_ABORT
    CONTINUE_PRECOPY = C.XGS_POLICY_CONTINUE_PRECOPY
    STOP_AND_COPY = C.XGS_POLICY_STOP_AND_COPY


class CheckpointResult(enum.IntEnum):
    """What a restore-side ``checkpoint`` returns (``XGR_CHECKPOINT_*``)."""

    ERROR = C.XGR_CHECKPOINT_ERROR
    SUCCESS = C.XGR_CHECKPOINT_SUCCESS
    FAILOVER = C.XGR_CHECKPOINT_FAILOVER


class _Deferred:
    __slots__ = ()

    def __repr__(self) -> str:
        return "xensr.DEFERRED"


#: Returned by a callback that will answer later through
#: :meth:`xensr.Operation.reply`.
DEFERRED: Any = _Deferred()

#: Callback methods a save / restore looks for.
SAVE_CALLBACKS = ("suspend", "postcopy", "checkpoint", "wait_checkpoint",
                  "switch_qemu_logdirty", "precopy_policy", "progress")
RESTORE_CALLBACKS = ("suspend", "postcopy", "checkpoint", "wait_checkpoint",
                     "static_data_done", "progress")


class Callbacks:
    """A callbacks object built from functions: ``Callbacks(suspend=f)``.

    Only the functions given become methods, so only they set cbflags.
    """

    def __init__(self, **functions: Callable[..., Any]):
        known = set(SAVE_CALLBACKS) | set(RESTORE_CALLBACKS)
        for name, fn in functions.items():
            if name not in known:
                raise TypeError(f"unknown callback {name!r}")
            if not callable(fn):
                raise TypeError(f"callback {name!r} is not callable")
            setattr(self, name, fn)

    def __repr__(self) -> str:
        return f"Callbacks({', '.join(sorted(vars(self)))})"


# ----------------------------------------------------------------------
# Reply values (PROTOCOL.md B§5.6).  Internal to xensr.

def _as_bool_reply(name: str, value: Any) -> int:
    """bool -> 1/0; int passes through (COLO 2 = failover)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"{name}() must return a bool, not {type(value).__name__}")


def _as_status_reply(name: str, value: Any) -> int:
    """None/True -> 0 (done), False -> -1; int passes through (0 = OK)."""
    if value is None or value is True:
        return 0
    if value is False:
        return -1
    if isinstance(value, int):
        return int(value)
    raise TypeError(
        f"{name}() must return None or a bool, not {type(value).__name__}")


def _as_policy_reply(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name}() must return an XGS_POLICY_* int, not {type(value).__name__}")
    if int(value) not in (C.XGS_POLICY_ABORT, C.XGS_POLICY_CONTINUE_PRECOPY,
                          C.XGS_POLICY_STOP_AND_COPY):
        raise ValueError(f"{name}() returned {value!r}, not an XGS_POLICY_* value")
    return int(value)


_REPLY_MAPPERS = {
    "suspend": _as_bool_reply,
    "postcopy": _as_bool_reply,
    "checkpoint": _as_bool_reply,
    "wait_checkpoint": _as_bool_reply,
    "switch_qemu_logdirty": _as_status_reply,
    "static_data_done": _as_status_reply,
    "precopy_policy": _as_policy_reply,
}

#: The reply that makes libxenguest give up, for a request that arrives or
#: is pending after the operation was aborted.
_FAILURE_REPLY = {
    "suspend": 0,
    "postcopy": 0,
    "checkpoint": 0,
    "wait_checkpoint": 0,
    "switch_qemu_logdirty": -1,
    "static_data_done": -1,
    "precopy_policy": C.XGS_POLICY_ABORT,
    "complete": 0,
}


def reply_value(name: str, value: Any) -> int:
    """The int sent to the helper for what callback ``name`` returned."""
    return _REPLY_MAPPERS[name](name, value)


def failure_reply(name: str) -> int:
    return _FAILURE_REPLY[name]


def find(callbacks: Optional[object], name: str) -> Optional[Callable[..., Any]]:
    """The callable attribute ``name`` of callbacks, or None."""
    if callbacks is None:
        return None
    fn = getattr(callbacks, name, None)
    return fn if callable(fn) else None
