"""Callbacks: what the helper asks the toolstack during a save or restore.

A callbacks object is any object; the methods it has decide which libxc
callbacks the helper installs (the cbflags it is given).  All are optional:

Save:
  ``suspend() -> bool``
      Suspend the guest now (the last round follows).  True: suspended.
      Without one, xensr answers True and libxenguest checks the domain's
      state itself (the simulated host's domains suspend on that answer; on real
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
from typing import Any, Callable, Optional

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


#: libxenguest's ``struct precopy_stats`` after a precopy round
#: (``iteration``, ``total_written``, ``dirty_count``): what
#: ``precopy_policy`` receives.  Generated from the message table.
PrecopyStats = C.PrecopyStats


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

#: Callback methods a save / restore looks for (from the message table).
SAVE_CALLBACKS = C.CALLBACKS_SAVE
RESTORE_CALLBACKS = C.CALLBACKS_RESTORE


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
# Reply values (docs/protocol.md §6.2).  Internal to xensr.  The mapping of
# each request (bool, status, enum) is the table's; the callout applies it
# (one implementation, in C, for its fast path and for these).

def reply_value(name: str, value: Any) -> int:
    """The int sent to the helper for what callback ``name`` returned;
    TypeError / ValueError for a value the message's reply mapping refuses."""
    from . import _xc  # not at import time: xensr.testing stays pure Python

    reply: int = _xc.map_reply(C.MESSAGES_BY_NAME[name].number, value)
    return reply


def failure_reply(name: str) -> int:
    """The reply that makes libxenguest give up (from the message table)."""
    return C.FAILURE_REPLY[name]


def find(callbacks: Optional[object], name: str) -> Optional[Callable[..., Any]]:
    """The callable attribute ``name`` of callbacks, or None."""
    if callbacks is None:
        return None
    fn = getattr(callbacks, name, None)
    return fn if callable(fn) else None
