"""Saving and restoring domains: operations, results, and the blocking API.

An :class:`Operation` (:class:`SaveOperation` or :class:`RestoreOperation`)
is one run of the helper, driven by whatever event loop the caller has:

    op = SaveOperation(domid, fd, callbacks, live=True)
    op.start()
    while not op.done():
        ... wait until one of op.fds() is ready or op.next_deadline() ...
        op.handle(fd, events)       # for each ready fd
        op.handle_timeout()         # when next_deadline() has passed
    result = op.result()            # or raises the typed error

:meth:`Operation.run` is that loop, run by the callout in C (blocking);
:func:`save_domain` / :func:`restore_domain` build an operation and run it;
:mod:`xensr.aio` drives operations from asyncio.
"""

from __future__ import annotations

import errno as _errno
import inspect
import logging
import numbers
import os
import re
import shutil
import signal as _signal
import time
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Mapping,
                    Optional, Tuple, Type, TypedDict, Union)

from . import _constants as C
from . import _xc
from ._xenlibs import check_helper_libraries

if TYPE_CHECKING:
    from typing_extensions import Unpack
from . import callbacks as _cb
from .callbacks import DEFERRED
from .xlfile import check_file_position
from .policy import DowntimePolicy, PrecopyReport, RoundRecorder
from .errors import (Aborted, CallbackError, HelperExitError,
                     HelperStartError, HelperTimeout, ProtocolError,
                     SaveRestoreError, StalledFrameError, XensrError)

__all__ = [
    "EVENT_READ",
    "EVENT_WRITE",
    "Operation",
    "SaveOperation",
    "RestoreOperation",
    "SaveResult",
    "RestoreResult",
    "save_domain",
    "restore_domain",
    "helper_path",
    "resolve_helper",
    "HelperOptions",
    "SaveOptions",
    "RestoreOptions",
    "SaveOperationOptions",
    "RestoreOperationOptions",
]

#: Event bits of :meth:`Operation.fds` / :meth:`Operation.handle` (the
#: values of :data:`selectors.EVENT_READ` / :data:`selectors.EVENT_WRITE`).
EVENT_READ = 1
EVENT_WRITE = 2

#: Default seconds between SIGTERM and SIGKILL when stopping a helper.
DEFAULT_KILL_GRACE = 5.0

#: Default seconds a frame the helper started may take to arrive whole.
#: A healthy helper writes each frame at once; one that stops in the
#: middle of a frame would otherwise leave both sides waiting forever.
DEFAULT_FRAME_TIMEOUT = 10.0

FileDescriptor = Union[int, Any]  # an int or an object with fileno()

helper_log = logging.getLogger("xensr.helper")
_log = logging.getLogger("xensr")

# xentoollog level -> logging level.
_PY_LEVELS = {
    C.XTL_NONE: logging.DEBUG,
    C.XTL_DEBUG: logging.DEBUG,
    C.XTL_VERBOSE: logging.DEBUG,
    C.XTL_DETAIL: logging.DEBUG,
    C.XTL_PROGRESS: logging.INFO,
    C.XTL_INFO: logging.INFO,
    C.XTL_NOTICE: logging.INFO,
    C.XTL_WARN: logging.WARNING,
    C.XTL_ERROR: logging.ERROR,
    C.XTL_CRITICAL: logging.CRITICAL,
}

_VERSION_RE = re.compile(r"xensr (\S+), table ([0-9a-f]{16})")

# Messages counted in results: the requests and the results.
_COUNTED = tuple((m.number, m.name) for m in C.MESSAGES if m.role in ("request", "results"))


def _log_levels() -> int:
    """The Callout's log_levels for what the 'xensr.helper' logger keeps."""
    enabled = {py: helper_log.isEnabledFor(py) for py in set(_PY_LEVELS.values())}
    mask = 0
    for xtl, py in _PY_LEVELS.items():
        if enabled[py]:
            mask |= 1 << xtl
    if helper_log.isEnabledFor(logging.WARNING):
        mask |= 1 << C.XTL_LEVEL_COUNT  # the bit of levels above the table's
    return mask


# ----------------------------------------------------------------------
# Keyword options, each documented once.  The functions that take them
# declare ``**options: Unpack[...]`` so that type checkers catch a
# misspelled keyword everywhere; _options() checks them at run time and
# fills in the defaults.

class HelperOptions(TypedDict, total=False):
    """Options of every save and restore."""

    #: The helper to run (see :func:`resolve_helper`).
    helper: Union[str, "os.PathLike[str]", None]
    #: The helper's environment (default: inherited).
    env: Optional[Mapping[str, str]]
    #: Seconds for the whole operation; then the helper is stopped
    #: (SIGTERM, SIGKILL after ``kill_grace``) and HelperTimeout raised.
    timeout: Optional[float]
    #: Seconds without a frame while the helper is not waiting for a
    #: callback; then as ``timeout``.
    idle_timeout: Optional[float]
    #: Seconds between SIGTERM and SIGKILL when stopping the helper.
    kill_grace: float
    #: Seconds a frame the helper started may take to arrive whole; then
    #: the helper is killed and StalledFrameError raised.  None: no limit.
    frame_timeout: Optional[float]


class SaveFileOptions(HelperOptions, total=False):
    """Options of a save other than its stream type."""

    #: Precopy while the guest runs (XCFLAGS_LIVE).
    live: bool
    #: XCFLAGS_DEBUG.
    debug: bool
    #: The back channel (COLO).
    recv_fd: Optional[FileDescriptor]
    #: A precopy policy for a live save (:class:`xensr.policy.DowntimePolicy`,
    #: copied for each save), instead of libxenguest's default; xensr's
    #: helper only.  The callbacks object then has no precopy_policy.
    policy: Optional[Any]


class SaveOptions(SaveFileOptions, total=False):
    """Options of :func:`save_domain`."""

    #: XC_STREAM_PLAIN, _REMUS or _COLO.
    stream_type: int


class SaveOperationOptions(SaveOptions, total=False):
    """Options of :class:`SaveOperation`."""

    #: How many of the helper's last log lines are kept.
    log_tail: int


class RestoreFileOptions(HelperOptions, total=False):
    """Options of a restore other than its stream type."""

    #: The domains serving the new domain's xenstore and console rings.
    store_domid: int
    console_domid: int
    #: The back channel (COLO).
    send_back_fd: Optional[FileDescriptor]


class RestoreOptions(RestoreFileOptions, total=False):
    """Options of :func:`restore_domain`."""

    #: XC_STREAM_PLAIN, _REMUS or _COLO.
    stream_type: int


class RestoreOperationOptions(RestoreOptions, total=False):
    """Options of :class:`RestoreOperation`."""

    #: How many of the helper's last log lines are kept.
    log_tail: int


_DEFAULTS: Dict[str, Any] = {
    "helper": None, "env": None, "timeout": None, "idle_timeout": None,
    "kill_grace": DEFAULT_KILL_GRACE, "frame_timeout": DEFAULT_FRAME_TIMEOUT,
    "log_tail": 20, "stream_type": C.XC_STREAM_PLAIN,
    "live": False, "debug": False, "recv_fd": None, "policy": None,
    "store_domid": 0, "console_domid": 0, "send_back_fd": None,
}


def _options(func: str, given: Mapping[str, Any], kind: Type[Any]) -> Dict[str, Any]:
    """The options of ``kind`` (a TypedDict above) with their defaults;
    TypeError, as Python gives for a keyword it does not know, for others."""
    allowed = kind.__optional_keys__ | kind.__required_keys__
    for key in given:
        if key not in allowed:
            raise TypeError(f"{func}() got an unexpected keyword argument {key!r}")
    out = {key: _DEFAULTS[key] for key in allowed}
    out.update(given)
    return out


# ----------------------------------------------------------------------
# Helper selection

def helper_path() -> str:
    """The helper installed inside the xensr package (``xensr/bin``).

    Raises HelperStartError when it is missing or not executable.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "bin", "xensr-save-helper")
    if not os.path.exists(path):
        raise HelperStartError(
            _errno.ENOENT, "xensr's helper is not installed (build xensr first)", path)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise HelperStartError(_errno.EACCES, "xensr's helper is not executable", path)
    return path


def resolve_helper(helper: Union[str, "os.PathLike[str]", None] = None) -> str:
    """The helper to run: ``helper``, else ``$XENSR_SAVE_HELPER``, else
    :func:`helper_path`.  A name without ``/`` is looked up in ``PATH``."""
    if helper is None:
        helper = os.environ.get("XENSR_SAVE_HELPER") or None
    if helper is None:
        return helper_path()
    helper = os.fsdecode(os.fspath(helper))
    if not helper:
        raise HelperStartError(_errno.ENOENT, "empty helper path", helper)
    if "/" not in helper:
        found = shutil.which(helper)
        if found is None:
            raise HelperStartError(_errno.ENOENT, "helper not found in PATH", helper)
        return found
    return helper


# ----------------------------------------------------------------------
# Results

@dataclass(frozen=True)
class OperationResult:
    """What a successful save or restore reports."""

    #: The domain saved or restored.
    domid: int
    #: What xc_domain_save/xc_domain_restore returned (0) and its errno.
    retval: int
    errno: int
    #: The helper's pid, exit status (0) and path.
    pid: int
    returncode: int
    helper: str
    #: Seconds from spawn to the helper's exit.
    elapsed: float
    #: How many times each callback was asked for.
    callbacks: Mapping[str, int]
    #: Frames and log lines the helper sent.
    frames: int
    log_lines: int


@dataclass(frozen=True)
class SaveResult(OperationResult):
    #: Precopy rounds the precopy_policy callback was asked about (0
    #: without one): libxenguest asks twice per round, the second time
    #: with ``dirty_count`` -1, and that counts once.
    precopy_iterations: int = 0
    #: Rounds, pages and bytes per round, the policy's decisions, pages
    #: sent after the suspend and the time suspended
    #: (:class:`xensr.policy.PrecopyReport`).
    precopy: PrecopyReport = PrecopyReport()


@dataclass(frozen=True)
class RestoreResult(OperationResult):
    #: The restored domain's xenstore and console frames.
    store_gfn: int = 0
    console_gfn: int = 0


# ----------------------------------------------------------------------
# Argument checks

def _fileno(what: str, fd: FileDescriptor) -> int:
    if isinstance(fd, bool):
        raise TypeError(f"{what} must be an fd or have fileno(), not bool")
    if isinstance(fd, int):
        n = fd
    elif hasattr(fd, "fileno"):
        n = fd.fileno()
    else:
        raise TypeError(f"{what} must be an fd or have fileno(), not {type(fd).__name__}")
    if n < 0:
        raise ValueError(f"{what} must be an open fd, not {n}")
    return n


def _uint(what: str, value: int, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{what} must be in 0..{(1 << bits) - 1}, not {value}")
    return value


def _seconds(what: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    # A str would convert, but is a caller's mistake (timeout="3").
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be seconds (int or float) or None, "
                        f"not {type(value).__name__}")
    value = float(value)
    if not value > 0:
        raise ValueError(f"{what} must be positive seconds or None, not {value}")
    return value


# The last environment encoded: (a copy of the mapping, its entries).
# Toolstacks pass the same environment to operation after operation;
# comparing two dicts is much cheaper than encoding every entry again.
_env_cache: Tuple[Optional[Dict[Any, Any]], List[bytes]] = (None, [])


def _env_list(env: Optional[Mapping[str, str]]) -> Optional[List[bytes]]:
    global _env_cache
    if env is None:
        return None
    cached, entries = _env_cache
    if type(env) is not dict:
        env = dict(env)
    if cached is not None and env == cached:
        return entries
    entries = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    _env_cache = (dict(env), entries)
    return entries


def _strerror(err: int) -> str:
    """os.strerror, for any int a helper may send (os.strerror raises
    OverflowError beyond a C int, ValueError on some platforms)."""
    try:
        return os.strerror(err)
    except (ValueError, OverflowError):
        return f"errno {err}"


# ----------------------------------------------------------------------
# How the helper ended -> the operation's error

@dataclass(frozen=True)
class HelperExit:
    """What is known once the helper was reaped."""

    what: str  # "domain 5 save helper [1234]", for messages
    pid: Optional[int]
    returncode: Optional[int]  # as subprocess: -N for signal N
    status_lost: bool  # someone else reaped it
    core_dumped: bool
    completed: bool  # `complete` arrived
    results_missing: bool  # a restore without restore_results
    retval: int  # complete's arguments
    errnoval: int
    failed_call: str  # "save of domain 5 failed: xc_domain_save"


def exit_error(ex: HelperExit) -> Optional[XensrError]:
    """The error an operation ends with, None for success (docs/protocol.md §8.3, in
    libxl's order: exit status, results, completion, libxc's result)."""
    what, rc = ex.what, ex.returncode
    if ex.status_lost:
        if not ex.completed:
            return HelperExitError(
                f"{what} was reaped by someone else: exit status unknown",
                pid=ex.pid, reason="lost")
    elif rc is not None and rc > 0:
        return HelperExitError(f"{what} exited with error status {rc}",
                               pid=ex.pid, status=rc, reason="status")
    elif rc is not None and rc < 0:
        try:
            name = _signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        core = " (core dumped)" if ex.core_dumped else ""
        return HelperExitError(f"{what} died due to fatal signal {name}{core}",
                               pid=ex.pid, signal=-rc,
                               core_dumped=ex.core_dumped, reason="signal")
    # Exited 0 (or reaped by someone else after completing) from here on.
    status = None if ex.status_lost else rc
    if ex.results_missing:
        return HelperExitError(f"{what} exited without providing results",
                               pid=ex.pid, status=status, reason="no-results")
    if not ex.completed:
        return HelperExitError(f"{what} exited without signalling completion",
                               pid=ex.pid, status=status, reason="no-completion")
    if ex.retval != 0:
        e = ex.errnoval
        text = _strerror(e) if e > 0 else "no errno"
        return SaveRestoreError(
            f"{ex.failed_call} returned {ex.retval} (errno {e}: {text})",
            retval=ex.retval, errno=e)
    return None


# ----------------------------------------------------------------------
# The operation

class Operation:
    """One save or restore: a helper process and its protocol, loop-agnostic.

    Use :class:`SaveOperation` or :class:`RestoreOperation`.  Not
    thread-safe, except :meth:`abort` and :meth:`kill`, which may be called
    from another thread while :meth:`run` blocks.  This class is the life
    cycle (start, the loop interface, deadlines, stopping, the end); what
    the helper's frames mean is :class:`_Messages`', and how its exit
    becomes an error is :func:`exit_error`'s.
    """

    direction: int
    kind: str
    _mode: str
    _extra_cbflags = 0

    def __init__(self, domid: int, fd: FileDescriptor, callbacks: Optional[object],
                 *, back_fd: Optional[FileDescriptor], stream_type: int,
                 helper: Union[str, "os.PathLike[str]", None],
                 env: Optional[Mapping[str, str]],
                 timeout: Optional[float], idle_timeout: Optional[float],
                 kill_grace: float, frame_timeout: Optional[float], log_tail: int):
        self.domid = _uint("domid", domid, 32)
        self.fd = _fileno("fd", fd)
        self._fd_objects = [o for o in (fd, back_fd) if not isinstance(o, int) and o is not None]
        self.back_fd = -1 if back_fd is None else _fileno("back-channel fd", back_fd)
        if stream_type not in (C.XC_STREAM_PLAIN, C.XC_STREAM_REMUS, C.XC_STREAM_COLO):
            raise ValueError(f"stream_type must be XC_STREAM_PLAIN, _REMUS or _COLO, not {stream_type!r}")
        self.stream_type = int(stream_type)
        _cb.check(callbacks)
        self.callbacks = callbacks
        self.timeout = _seconds("timeout", timeout)
        self.idle_timeout = _seconds("idle_timeout", idle_timeout)
        grace = _seconds("kill_grace", kill_grace)
        assert grace is not None
        self.kill_grace = grace
        self.frame_timeout = _seconds("frame_timeout", frame_timeout)
        if log_tail < 1:
            raise ValueError("log_tail must be at least 1")
        self._helper_arg = helper
        self._env = _env_list(env)
        #: The helper path, once started.
        self.helper: Optional[str] = None

        # The libxc callbacks the toolstack has, and those always installed.
        self.cbflags = (_xc.compute_cbflags(callbacks, self.direction)
                        | C.ALWAYS_CBFLAGS[self.direction] | self._extra_cbflags)
        self._callout = _xc.Callout(self.direction, self.cbflags, log_tail)
        self._messages = _Messages(self)
        self._set_callbacks()
        self._state = "new"             # new -> running -> done
        self._error: Optional[XensrError] = None
        self._result: Optional[OperationResult] = None
        self._stopping = False
        self._t0 = 0.0
        self._deadline: Optional[float] = None
        self._last_frame = 0.0
        self._kill_at: Optional[float] = None
        self._pending: Optional[str] = None
        self._pending_task: Any = None
        self._runner: Optional[Callable[[Any, Optional[str]], Any]] = None
        self._listener: Optional[Callable[[], None]] = None
        self._log_seen = 0
        self._callout.progress_wanted = _cb.find(callbacks, "progress") is not None
        self.elapsed: Optional[float] = None

    # -- subclass hooks ---------------------------------------------------

    def _args(self) -> List[int]:
        raise NotImplementedError

    def _set_callbacks(self) -> None:
        """The callout calls the toolstack's callbacks itself (no Python
        layer in between); only unusual returns come back, to
        _Messages.direct_result.  Without a callback the callout answers
        the table's default reply; once the operation stops, its failure
        reply (_stop_callbacks)."""
        names = C.CALLBACKS_SAVE if self.direction == C.DIR_SAVE else C.CALLBACKS_RESTORE
        co = self._callout
        for name in names:
            fn = _cb.find(self.callbacks, name)
            if fn is not None:
                co.set_direct(C.MESSAGES_BY_NAME[name].number, fn,
                              C.STRUCT_CLASSES.get(name))

    def _stop_callbacks(self) -> None:
        self._callout.stop_callbacks()

    @property
    def helper_version(self) -> Optional[str]:
        """Version of xensr's helper from its first log line (None: another
        helper, or not known yet)."""
        return self._messages.helper_version

    def _require(self, *names: str) -> None:
        missing = [n for n in names if _cb.find(self.callbacks, n) is None]
        if missing:
            raise ValueError(
                f"a {self.kind} with stream_type {self.stream_type} needs the "
                f"callbacks {', '.join(missing)}")

    # -- state ------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} domain {self.domid} {self._state}"
                f"{' pid %d' % self.pid if self.pid else ''}>")

    @property
    def pid(self) -> Optional[int]:
        """The helper's pid once started."""
        pid = self._callout.pid
        return pid if pid > 0 else None

    @property
    def returncode(self) -> Optional[int]:
        """The helper's exit status once reaped (-N: killed by signal N)."""
        return self._callout.returncode

    @property
    def log_tail(self) -> Tuple[str, ...]:
        """The helper's last log lines, oldest first."""
        return self._callout.log_tail

    @property
    def pending_request(self) -> Optional[str]:
        """The callback whose answer the helper is waiting for, if deferred."""
        return self._pending

    def done(self) -> bool:
        return self._state == "done"

    def result(self) -> OperationResult:
        """The result, or raise the operation's error.  Only once done."""
        if self._state != "done":
            raise RuntimeError(f"{self!r} has not finished")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self) -> Optional[XensrError]:
        if self._state != "done":
            raise RuntimeError(f"{self!r} has not finished")
        return self._error

    def _what(self) -> str:
        return f"domain {self.domid} {self.kind} helper [{self.pid}]"

    # -- start ------------------------------------------------------------

    def start(self) -> None:
        """Spawn the helper.  Raises HelperStartError if it cannot run."""
        if self._state != "new":
            raise RuntimeError(f"{self!r} was already started")
        try:
            # A file object's buffered writes go before the helper's, and
            # one that has read ahead would hand the helper a stream that
            # starts past its first bytes.
            for obj in self._fd_objects:
                flush = getattr(obj, "flush", None)
                if flush is not None and not getattr(obj, "closed", False):
                    flush()
                    check_file_position(obj, obj.fileno())
            self.helper = resolve_helper(self._helper_arg)
            check_helper_libraries(self.helper, self._env)
            self._callout.spawn(self.helper, self._mode, self.fd, self.back_fd,
                                self._args(), self._env)
        except BaseException as exc:
            self._state = "done"
            self._callout.close()
            if isinstance(exc, XensrError):
                self._error = exc
            raise
        now = time.monotonic()
        self._t0 = now
        self._last_frame = now
        if self.timeout is not None:
            self._deadline = now + self.timeout
        self._state = "running"

    # -- the loop interface -----------------------------------------------

    def fds(self) -> List[Tuple[int, int]]:
        """``(fd, events)`` to watch now; events are EVENT_READ/EVENT_WRITE.

        The set changes as the operation goes on: ask again after each
        :meth:`handle` / :meth:`handle_timeout` / :meth:`reply` / :meth:`abort`.
        """
        if self._state != "running":
            return []
        co = self._callout
        out = []
        if co.reading:
            out.append((co.stdout_fd, EVENT_READ))
        if co.wants_write:
            out.append((co.stdin_fd, EVENT_WRITE))
        if not co.reaped:
            out.append((co.pidfd, EVENT_READ))
        return out

    def handle(self, fd: int, events: int = EVENT_READ) -> None:
        """Call when ``fd`` from :meth:`fds` is ready (errors/hangups count
        as ready)."""
        if self._state != "running":
            return
        co = self._callout
        if fd == co.stdout_fd:
            self._read_frames()
        elif fd == co.stdin_fd:
            co.on_writable()
        elif fd == co.pidfd:
            if co.poll_exit():
                self._exited()

    def _read_frames(self) -> None:
        """The frame pipe is readable: read and dispatch its frames (the
        hot path of :meth:`handle`)."""
        co = self._callout
        if self._state != "running" or not co.reading:
            return
        frames = co.frames
        try:
            co.on_readable(self._messages)
        except ProtocolError as exc:
            self._fail(exc)
        if co.frames != frames:
            if self.idle_timeout is not None:
                self._last_frame = time.monotonic()
            if co.log_lines != self._log_seen:
                self._refresh_log_levels()

    def next_deadline(self) -> Optional[float]:
        """When :meth:`handle_timeout` must be called (a
        :func:`time.monotonic` value), or None."""
        if self._state != "running":
            return None
        when = self._kill_at
        if self._error is None:
            d = self._deadline
            if d is not None and (when is None or d < when):
                when = d
            if self.idle_timeout is not None and self._pending is None:
                d = self._last_frame + self.idle_timeout
                if when is None or d < when:
                    when = d
            d = self._frame_deadline()
            if d is not None and (when is None or d < when):
                when = d
        return when

    def _frame_deadline(self) -> Optional[float]:
        """When the frame the helper started must have arrived whole."""
        since = self._callout.partial_since
        if self.frame_timeout is None or since <= 0.0:
            return None
        return since + self.frame_timeout

    def handle_timeout(self, now: Optional[float] = None) -> None:
        """Act on deadlines that have passed (timeouts, the kill grace)."""
        if self._state != "running":
            return
        if now is None:
            now = time.monotonic()
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            self._callout.send_signal(_signal.SIGKILL)
        if self._error is not None:
            return
        if self._deadline is not None and now >= self._deadline:
            self._stop(HelperTimeout(
                f"{self._what()} did not finish within {self.timeout:g} s",
                kind="timeout", seconds=self.timeout or 0.0))
        elif (self.idle_timeout is not None and self._pending is None
              and now >= self._last_frame + self.idle_timeout):
            self._stop(HelperTimeout(
                f"{self._what()} sent nothing for {self.idle_timeout:g} s",
                kind="idle", seconds=self.idle_timeout))
        else:
            self._check_frame_timeout(now)

    def _check_frame_timeout(self, now: float) -> None:
        """A frame begun but not finished in time: the stream is broken
        (the helper stopped, or what it sent was not a frame) and each side
        may be waiting for the other, so give up on the helper at once."""
        d = self._frame_deadline()
        if d is None or now < d:
            return
        co = self._callout
        self._fail(StalledFrameError(
            f"{self._what()} began a frame and did not finish it within "
            f"{self.frame_timeout:g} s ({co.partial_length} bytes of it received)",
            offset=co.partial_length, seconds=self.frame_timeout or 0.0))

    # -- stopping ---------------------------------------------------------

    def abort(self) -> None:
        """Stop the operation: SIGTERM (the helper unwinds; a save resumes
        the guest) or, if the helper is waiting for a callback's answer,
        the failure reply (libxenguest unwinds on it); SIGKILL after
        ``kill_grace`` seconds.  The result is :class:`Aborted` unless the
        operation had already failed."""
        if self._state == "new":
            self._state = "done"
            self._error = Aborted(f"domain {self.domid} {self.kind} aborted before it started")
            self._callout.close()
            return
        self._stop(Aborted(f"domain {self.domid} {self.kind} aborted"))
        self._changed()

    def kill(self) -> None:
        """Stop the operation now with SIGKILL (result: Aborted unless it
        had already failed)."""
        if self._state != "running":
            self.abort()
            return
        self._fail(Aborted(f"domain {self.domid} {self.kind} aborted (killed)"))
        self._changed()

    def _stop(self, err: XensrError) -> None:
        """Graceful stop: the failure reply if the helper waits for one,
        else SIGTERM; SIGKILL after the grace period."""
        if self._state != "running" or self._error is not None:
            return
        self._error = err
        self._stopping = True
        self._stop_callbacks()
        self._kill_at = time.monotonic() + self.kill_grace
        self._callout.wake()
        if not self._answer_failed():
            self._callout.send_signal(_signal.SIGTERM)

    def _answer_failed(self) -> bool:
        """The helper is blocked waiting for us (a deferred reply, or a
        callback that raised or was interrupted): answer "failed" so that
        libxenguest unwinds instead of waiting for the SIGKILL.  No SIGTERM
        then: it would interrupt the helper's read of that reply (libxl's
        helper exits 254 on it, leaving the guest as it was).  True if a
        request was answered."""
        co = self._callout
        name = self._pending
        if name is None and co.awaiting:
            name = C.MESSAGES_BY_NUMBER[co.awaiting].name
        self._clear_pending()
        if name is None or not co.awaiting:
            return False
        co.send_reply(_cb.failure_reply(name))
        return True

    def _fail(self, err: XensrError) -> None:
        """Hard stop (protocol or callback error): SIGKILL at once."""
        if self._state != "running":
            return
        if self._error is None:
            self._error = err
        self._stop_callbacks()
        self._clear_pending()
        self._kill_at = None
        self._callout.stop_reading()
        self._callout.send_signal(_signal.SIGKILL)

    def _clear_pending(self) -> None:
        task = self._pending_task
        self._pending = None
        self._pending_task = None
        if task is not None:
            task.cancel()

    def close(self) -> None:
        """Release everything.  A helper still running is killed (SIGKILL)
        and reaped; the operation then ends as Aborted."""
        if self._state == "new":
            self.abort()
            return
        if self._state != "running":
            return
        self._fail(Aborted(f"domain {self.domid} {self.kind} closed while running"))
        self._callout.kill_and_reap()
        self._exited()

    def __enter__(self) -> "Operation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the end ----------------------------------------------------------

    def _exited(self) -> None:
        """The helper was reaped: read what it left, then finish."""
        co = self._callout
        if co.reading:
            try:
                co.drain(self._messages)
            except ProtocolError as exc:
                self._fail(exc)
        co.stop_reading()
        self._clear_pending()
        co.close()
        self.elapsed = time.monotonic() - self._t0
        self._state = "done"
        self._runner = None
        err = self._error
        if err is None:
            err = self._exit_error()
        if err is None:
            self._result = self._make_result()
        else:
            if not err.log_tail:
                err.with_log_tail(co.log_tail)
            self._error = err

    def _exit_error(self) -> Optional[XensrError]:
        co = self._callout
        return exit_error(HelperExit(
            what=self._what(), pid=self.pid, returncode=co.returncode,
            status_lost=co.status_lost, core_dumped=co.core_dumped,
            completed=co.completed, results_missing=self._needs_results(),
            retval=co.retval, errnoval=co.errnoval,
            failed_call=(f"{self.kind} of domain {self.domid} failed: "
                         + ("xc_domain_save" if self.direction == C.DIR_SAVE
                            else "xc_domain_restore"))))

    def _needs_results(self) -> bool:
        return False

    def _result_fields(self) -> Dict[str, Any]:
        co = self._callout
        return dict(
            domid=self.domid, retval=co.retval, errno=co.errnoval,
            pid=co.pid, returncode=co.returncode if co.returncode is not None else 0,
            helper=self.helper or "", elapsed=self.elapsed or 0.0,
            callbacks=self._callback_counts(), frames=co.frames, log_lines=co.log_lines)

    def _callback_counts(self) -> Dict[str, int]:
        counts = self._callout.type_counts
        return {name: counts[t] for t, name in _COUNTED if counts[t]}

    def _make_result(self) -> OperationResult:
        raise NotImplementedError

    # -- blocking driver --------------------------------------------------

    def run(self) -> OperationResult:
        """Start if needed, run to the end with the callout's own poll()
        loop (:meth:`xensr._xc.Callout.serve`), and
        return :meth:`result`.  Ctrl-C aborts the helper (a second one
        kills it), waits for it, then raises KeyboardInterrupt."""
        if self._state == "new":
            self.start()
        interrupted: Optional[BaseException] = None
        try:
            while self._state == "running":
                try:
                    self._serve_once()
                except KeyboardInterrupt as exc:
                    if interrupted is None:
                        interrupted = exc
                        self.abort()
                    else:
                        self.kill()
        finally:
            if self._state == "running":
                self.close()
        if interrupted is not None:
            raise interrupted
        return self.result()

    def _serve_once(self) -> None:
        """Let the callout's own poll loop (C) run until a deadline, the
        helper's exit, or a change that needs this layer (wake())."""
        co = self._callout
        # Come back at least once a second: abort() from another thread
        # gets its SIGKILL deadline honoured, log levels are looked at again.
        until = time.monotonic() + 1.0
        deadline = self.next_deadline()
        if deadline is not None and deadline < until:
            until = deadline
        stamp = self.idle_timeout is not None
        frames = co.frames
        try:
            r = co.serve(self._messages, until, stamp)
        except ProtocolError as exc:
            self._fail(exc)
            r = -1
        finally:
            if stamp and co.frames != frames and co.last_read_at > self._last_frame:
                self._last_frame = co.last_read_at
        if self._state != "running":
            return
        if r == 1 or r == 3:
            if co.poll_exit():
                self._exited()
                return
        if co.log_lines != self._log_seen:
            self._refresh_log_levels()
        deadline = self.next_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            self.handle_timeout()

    def _refresh_log_levels(self) -> None:
        """Log frames below what the 'xensr.helper' logger keeps are not
        decoded (only kept raw for log_tail); looked at again after each
        batch of reads that brought log lines."""
        co = self._callout
        self._log_seen = co.log_lines
        if not self._messages.first_log:
            co.log_levels = _log_levels()

    # -- deferred replies -------------------------------------------------

    def reply(self, value: Any) -> None:
        """Answer the request a callback deferred (it returned DEFERRED), with
        what the callback would have returned.  Ignored once the operation
        is stopping or done.  A value the callback could not return raises
        TypeError or ValueError and leaves the request pending."""
        if self._state != "running" or self._error is not None:
            self._pending = None
            self._pending_task = None
            return
        name = self._pending
        if name is None:
            raise RuntimeError("no callback is waiting for a reply")
        # Checked before anything changes: a value the callback could not
        # have returned leaves the request pending, to be answered again.
        v = _cb.reply_value(name, value)
        self._pending = None
        self._pending_task = None
        self._last_frame = time.monotonic()
        self._callout.send_reply(v)
        self._changed()

    def reply_error(self, exc: BaseException, name: Optional[str] = None) -> None:
        """A deferred callback failed: the operation fails with CallbackError."""
        if self._state != "running":
            return
        if name is None:
            name = self._pending or "callback"
        self._callback_failed(name, exc)
        self._changed()

    def set_listener(self, listener: Optional[Callable[[], None]]) -> None:
        """``listener()`` is called when :meth:`abort`, :meth:`kill`,
        :meth:`reply` or :meth:`reply_error` changed what :meth:`fds` and
        :meth:`next_deadline` return, so that the loop driving this
        operation looks again (they may be called from another thread:
        the listener must be thread-safe, e.g. ``call_soon_threadsafe``)."""
        self._listener = listener

    def _changed(self) -> None:
        self._callout.wake()
        listener = self._listener
        if listener is not None:
            listener()

    def _set_runner(self, runner: Optional[Callable[[Any, Optional[str]], Any]]) -> None:
        """How awaitables returned by callbacks are run: ``runner(awaitable,
        name)`` returns a handle with ``cancel()`` and, for a request
        (name not None), later calls :meth:`reply` or :meth:`reply_error`.
        Set by :mod:`xensr.aio`."""
        self._runner = runner

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        """A callback raised or returned what its request cannot take: stop
        as abort() does (the failure reply, SIGTERM, SIGKILL only after the
        grace), so that libxenguest unwinds and puts the guest back."""
        err = CallbackError(
            f"domain {self.domid} {self.kind}: callback {name}() failed: "
            f"{type(exc).__name__}: {exc}", callback=name)
        err.__cause__ = exc
        self._stop(err)


class _Messages:
    """What the callout hands back to an operation (it is the callout's
    handler): log lines, the restore's results, and the returns of the
    toolstack's callbacks that the callout did not turn into a reply
    itself (DEFERRED, awaitables, values its reply mapping refuses).

    Requests and progress reports reach the toolstack one way: the callout
    calls the callbacks given to :meth:`xensr._xc.Callout.set_direct`,
    answers the table's default reply when there is none, and the table's
    failure reply once the operation stops.
    """

    def __init__(self, op: "Operation"):
        self.op = op
        self.first_log = True
        #: Version of xensr's helper from its first log line (None: another helper).
        self.helper_version: Optional[str] = None
        #: (store_gfn, console_gfn) once the helper sent restore_results.
        self.results: Optional[Tuple[int, int]] = None

    def awaitable(self, name: Optional[str], value: Any) -> bool:
        """Hand an awaitable to the runner; False (and fail) without one."""
        op = self.op
        if op._runner is None:
            close = getattr(value, "close", None)
            if close is not None:
                close()         # no "never awaited" warning
            op._callback_failed(name or "progress", TypeError(
                "returned an awaitable; coroutine callbacks need xensr.aio "
                "(or return xensr.DEFERRED and call Operation.reply())"))
            return False
        handle = op._runner(value, name)
        if name is not None:
            op._pending_task = handle
        return True

    def request_value(self, name: str, value: Any) -> Optional[int]:
        """What a request's callback returned -> the reply, or None (later)."""
        op = self.op
        if value is DEFERRED:
            op._pending = name
            return None
        if inspect.isawaitable(value):
            op._pending = name
            if not self.awaitable(name, value):
                op._pending = None
            return None
        try:
            return _cb.reply_value(name, value)
        except (TypeError, ValueError) as exc:
            op._callback_failed(name, exc)
            return None

    def direct_result(self, msgtype: int, value: Any) -> Optional[int]:
        """A callback returned something the callout does not map itself."""
        info = C.MESSAGES_BY_NUMBER[msgtype]
        if info.role == "progress":
            if inspect.isawaitable(value):
                self.awaitable(None, value)
            return None
        return self.request_value(info.name, value)

    def direct_failed(self, msgtype: int, exc: BaseException) -> None:
        """A callback raised."""
        self.op._callback_failed(C.MESSAGES_BY_NUMBER[msgtype].name, exc)

    def msg_log(self, level: int, errnoval: int, context: str, formatted: str) -> None:
        op = self.op
        if self.first_log:
            self.first_log = False
            self.check_helper(formatted)
            op._refresh_log_levels()
        pylevel = _PY_LEVELS.get(level, logging.WARNING)
        if not helper_log.isEnabledFor(pylevel):
            return
        err = errnoval - (1 << 32) if errnoval >= (1 << 31) else errnoval
        suffix = f": {_strerror(err)}" if err > 0 else ""
        helper_log.log(pylevel, "[domain %d] %s: %s%s", op.domid, context,
                       formatted, suffix,
                       extra={"domid": op.domid, "xtl_context": context,
                              "xtl_errno": err, "xtl_level": level,
                              "helper_pid": op.pid})

    def check_helper(self, text: str) -> None:
        """The first log line names xensr's helper and its table digest."""
        op = self.op
        m = _VERSION_RE.search(text)
        if m is None:
            for info in C.MESSAGES:
                if info.extension and (
                        _cb.find(op.callbacks, info.name) is not None
                        or (info.name == "precopy_policy"
                            and getattr(op, "policy", None) is not None)):
                    _log.warning(
                        "domain %d: the helper %s is not xensr's: %s "
                        "will not be called", op.domid, op.helper, info.name)
            return
        self.helper_version = m.group(1)
        if m.group(2) != C.TABLE_DIGEST[:16]:
            _log.warning(
                "domain %d: helper %s (xensr %s) was built from message table "
                "%s, this xensr from %s: the helper is from another build",
                op.domid, op.helper, m.group(1), m.group(2), C.TABLE_DIGEST[:16])

    def msg_restore_results(self, store_gfn: int, console_gfn: int) -> None:
        self.results = (store_gfn, console_gfn)


class SaveOperation(Operation):
    """Save domain ``domid`` to ``fd`` (xc_domain_save in the helper).

    The keyword options are those of :class:`SaveOperationOptions`.
    """

    direction = C.DIR_SAVE
    kind = "save"
    _mode = "--save-domain"

    def __init__(self, domid: int, fd: FileDescriptor, callbacks: Optional[object] = None,
                 **options: Unpack[SaveOperationOptions]):
        o = _options("SaveOperation", options, SaveOperationOptions)
        self.policy = _save_policy(o["policy"], callbacks)
        if self.policy is not None:
            self._extra_cbflags = C.CBFLAG_PRECOPY_POLICY
        self.live = bool(o["live"])
        self.debug = bool(o["debug"])
        self.xcflags = ((C.XCFLAGS_LIVE if self.live else 0)
                        | (C.XCFLAGS_DEBUG if self.debug else 0))
        super().__init__(domid, fd, callbacks, back_fd=o["recv_fd"],
                         stream_type=o["stream_type"], helper=o["helper"], env=o["env"],
                         timeout=o["timeout"], idle_timeout=o["idle_timeout"],
                         kill_grace=o["kill_grace"], frame_timeout=o["frame_timeout"],
                         log_tail=o["log_tail"])
        if self.stream_type == C.XC_STREAM_COLO:
            self._require("checkpoint", "postcopy", "wait_checkpoint")
        elif self.stream_type == C.XC_STREAM_REMUS:
            self._require("checkpoint", "postcopy")
        # The rounds for the result: every progress report passes through
        # the recorder on its way to the toolstack's progress callback.
        self._rounds = RoundRecorder(_cb.find(callbacks, "progress"))
        self._callout.set_direct(C.MSG_PROGRESS, self._rounds.progress)
        self._callout.progress_wanted = True
        if self.policy is not None:
            self._callout.set_direct(C.MSG_PRECOPY_POLICY, self.policy.precopy_policy,
                                     C.STRUCT_CLASSES["precopy_policy"])

    def _args(self) -> List[int]:
        return [self.domid, self.xcflags, self.cbflags, self.stream_type]

    def _make_result(self) -> SaveResult:
        source = self.policy if self.policy is not None else self.callbacks
        decisions = tuple(source.decisions) if isinstance(source, DowntimePolicy) else ()
        return SaveResult(precopy_iterations=self._callout.precopy_rounds,
                          precopy=self._rounds.report(decisions, time.monotonic()),
                          **self._result_fields())

    @property
    def rounds(self) -> RoundRecorder:
        """The rounds as they are reported (``rounds.current()``: the one
        being sent, for a live display); the result's ``precopy`` is made
        from them."""
        return self._rounds


def _save_policy(policy: Optional[Any], callbacks: Optional[object]) -> Optional[DowntimePolicy]:
    """The ``policy`` option checked, as the save's own copy."""
    if policy is None:
        return None
    if not isinstance(policy, DowntimePolicy):
        raise TypeError(f"policy must be a xensr.policy.DowntimePolicy, not {type(policy).__name__}")
    if _cb.find(callbacks, "precopy_policy") is not None:
        raise ValueError("a save takes the policy option or a precopy_policy callback, not both")
    return policy.fresh()


class RestoreOperation(Operation):
    """Restore into domain ``domid`` from ``fd`` (xc_domain_restore).

    ``store_evtchn`` / ``console_evtchn``: the event channels of the new
    domain's xenstore and console rings.  The keyword options are those of
    :class:`RestoreOperationOptions`.
    """

    direction = C.DIR_RESTORE
    kind = "restore"
    _mode = "--restore-domain"

    def __init__(self, domid: int, fd: FileDescriptor, callbacks: Optional[object] = None,
                 *, store_evtchn: int, console_evtchn: int,
                 **options: Unpack[RestoreOperationOptions]):
        o = _options("RestoreOperation", options, RestoreOperationOptions)
        self.store_evtchn = _uint("store_evtchn", store_evtchn, 32)
        self.console_evtchn = _uint("console_evtchn", console_evtchn, 32)
        self.store_domid = _uint("store_domid", o["store_domid"], 16)
        self.console_domid = _uint("console_domid", o["console_domid"], 16)
        super().__init__(domid, fd, callbacks, back_fd=o["send_back_fd"],
                         stream_type=o["stream_type"], helper=o["helper"], env=o["env"],
                         timeout=o["timeout"], idle_timeout=o["idle_timeout"],
                         kill_grace=o["kill_grace"], frame_timeout=o["frame_timeout"],
                         log_tail=o["log_tail"])
        if self.stream_type == C.XC_STREAM_COLO:
            self._require("checkpoint", "suspend", "postcopy", "wait_checkpoint")
        elif self.stream_type == C.XC_STREAM_REMUS:
            self._require("checkpoint")

    def _args(self) -> List[int]:
        return [self.domid, self.store_evtchn, self.store_domid,
                self.console_evtchn, self.console_domid, self.cbflags,
                self.stream_type]

    @property
    def results(self) -> Optional[Tuple[int, int]]:
        """(store_gfn, console_gfn) once the helper sent restore_results."""
        return self._messages.results

    def _needs_results(self) -> bool:
        return self.results is None

    def _make_result(self) -> RestoreResult:
        assert self.results is not None
        return RestoreResult(store_gfn=self.results[0], console_gfn=self.results[1],
                             **self._result_fields())


# ----------------------------------------------------------------------
# The blocking API

def save_domain(domid: int, fd: FileDescriptor, callbacks: Optional[object] = None,
                **options: Unpack[SaveOptions]) -> SaveResult:
    """Save domain ``domid`` to ``fd``; block until done.  See
    :class:`SaveOptions` for the options and :mod:`xensr.callbacks`."""
    _options("save_domain", options, SaveOptions)
    op = SaveOperation(domid, fd, callbacks, **options)
    result = op.run()
    assert isinstance(result, SaveResult)
    return result


def restore_domain(domid: int, fd: FileDescriptor, callbacks: Optional[object] = None,
                   *, store_evtchn: int, console_evtchn: int,
                   **options: Unpack[RestoreOptions]) -> RestoreResult:
    """Restore into domain ``domid`` from ``fd``; block until done.
    ``store_evtchn`` / ``console_evtchn``: the event channels of the new
    domain's xenstore and console rings; see :class:`RestoreOptions`."""
    _options("restore_domain", options, RestoreOptions)
    op = RestoreOperation(domid, fd, callbacks, store_evtchn=store_evtchn,
                          console_evtchn=console_evtchn, **options)
    result = op.run()
    assert isinstance(result, RestoreResult)
    return result
