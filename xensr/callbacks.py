"""Callbacks: what the helper asks the toolstack during a save or restore.

A callbacks object is any object; the methods it has decide which libxc
callbacks the helper installs (the cbflags it is given).  All are optional:

Save:
  ``suspend() -> bool``
      Suspend the guest now (the last round follows).  True: suspended.
      Without one, xensr answers True and libxenguest checks the domain's
      state itself: the toolstack must have suspended the guest (the
      simulated host's guests suspend on that answer only when it was made
      with ``auto_suspend=True``).
  ``switch_qemu_logdirty(domid: int, enable: bool) -> None | bool``
      HVM: turn QEMU's log-dirty tracking on/off.  None/True: done;
      False or an exception: failure.  Without one, xensr answers "done".
  ``precopy_policy(stats: PrecopyStats) -> int``
      Live saves, xensr's helper only: before the first precopy round and
      twice after each (the first time with ``stats.dirty_count`` -1),
      return a :class:`PrecopyDecision` (``XGS_POLICY_*``).
      :class:`xensr.policy.DowntimePolicy` is one, aiming at a downtime.
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

A method may raise, or return what its request cannot take (the wrong
type, an int beyond a C int): the operation then stops as
:meth:`~xensr.Operation.abort` does -- the helper gets the failure reply,
libxenguest unwinds (a save turns log-dirty off and resumes the guest),
SIGKILL follows only after ``kill_grace`` -- and fails with
:class:`CallbackError` chained to the exception.

An attribute named like a callback must be callable or None (None: no
callback); anything else is a TypeError when the operation is created.
A callable attribute whose name is a callback's misspelled (``suspnd``)
gets a :class:`~xensr.CallbackWarning`: it is not called.  With :mod:`xensr.aio`
any method may be a coroutine function; with an :class:`~xensr.Operation`
driven by another loop a method may return :data:`DEFERRED` and answer
later with :meth:`~xensr.Operation.reply`.
"""

from __future__ import annotations

import difflib
import enum
import warnings
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

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


#: libxenguest's ``struct precopy_stats``: what ``precopy_policy``
#: receives.  Generated from the message table.
PrecopyStats = C.PrecopyStats
PrecopyStats.__doc__ = """libxenguest's ``struct precopy_stats``: what ``precopy_policy`` gets.

``iteration``: precopy rounds sent so far; ``total_written``: pages
written so far; ``dirty_count``: pages dirtied since the last round.

libxenguest asks the policy before the first round (``iteration`` 0,
``dirty_count`` all pages), then twice after each round: first right after
it with ``dirty_count`` -1 (the count is not known yet), then, unless told
to stop, with the count.  A policy comparing ``dirty_count`` with a
threshold must let -1 through (``dirty_count < 50`` would stop after the
first round).  Rounds, not calls, are counted in
:attr:`xensr.SaveResult.precopy_iterations`.
"""


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


_KNOWN = frozenset(C.CALLBACKS_SAVE) | frozenset(C.CALLBACKS_RESTORE)

# Attribute names of a class -> those that look like misspelled callbacks.
_misspelled_cache: Dict[Tuple[type, FrozenSet[str]], Tuple[Tuple[str, str], ...]] = {}


def _near_miss(attr: str) -> Optional[str]:
    """The callback name attr looks like a misspelling of, or None.

    Names that extend a callback's (``suspended``, ``pre_suspend``) are
    taken as deliberate."""
    if attr.startswith("_") or attr in _KNOWN:
        return None
    for name in difflib.get_close_matches(attr, _KNOWN, n=1, cutoff=0.8):
        if name not in attr:
            return name
    return None


def _misspelled(names: FrozenSet[str]) -> Tuple[Tuple[str, str], ...]:
    out = []
    for attr in sorted(names):
        name = _near_miss(attr)
        if name is not None:
            out.append((attr, name))
    return tuple(out)


def check(callbacks: Optional[object]) -> None:
    """Refuse a callbacks object whose callback-named attribute is neither
    callable nor None (TypeError); warn (CallbackWarning) about callable
    attributes that look like misspelled callbacks."""
    if callbacks is None:
        return
    for name in sorted(_KNOWN):
        fn = getattr(callbacks, name, None)
        if fn is not None and not callable(fn):
            raise TypeError(
                f"callback {name!r} of {type(callbacks).__name__} is not callable "
                f"(it is a {type(fn).__name__}; None means no callback)")
    tp = type(callbacks)
    inst = frozenset(getattr(callbacks, "__dict__", ()))
    key = (tp, inst)
    found = _misspelled_cache.get(key)
    if found is None:
        found = _misspelled(frozenset(dir(tp)) | inst)
        if len(_misspelled_cache) < 256:
            _misspelled_cache[key] = found
    from .errors import CallbackWarning
    for attr, name in found:
        if callable(getattr(callbacks, attr, None)):
            warnings.warn(
                f"{type(callbacks).__name__}.{attr} looks like a misspelled "
                f"callback {name!r}; it will not be called", CallbackWarning,
                stacklevel=4)


def find(callbacks: Optional[object], name: str) -> Optional[Callable[..., Any]]:
    """The callable attribute ``name`` of callbacks, or None."""
    if callbacks is None:
        return None
    fn = getattr(callbacks, name, None)
    return fn if callable(fn) else None
