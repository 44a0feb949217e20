"""The exceptions xensr raises.

Every error xensr raises is a :class:`XensrError`.  The classes below it say
what went wrong; their attributes carry the details a toolstack needs
(domid, helper pid, exit status, errno, the helper's last log lines).
:class:`CallbackWarning` is the one warning it gives.
"""

from __future__ import annotations

import errno as _errno
import os
import signal as _signal
from typing import Optional, Sequence

__all__ = [
    "XensrError",
    "HelperStartError",
    "HelperExitError",
    "ProtocolError",
    "ShortFrameError",
    "TrailingBytesError",
    "UnknownMessageError",
    "WrongDirectionError",
    "EmptyStringError",
    "UnterminatedStringError",
    "RuntFrameError",
    "UnexpectedCallbackError",
    "TruncatedFrameError",
    "StalledFrameError",
    "CallbackError",
    "Aborted",
    "HelperTimeout",
    "SaveRestoreError",
    "StreamFormatError",
    "ToolstackError",
    "DomainNotFound",
    "SuspendTimeout",
    "CallbackWarning",
]


class XensrError(Exception):
    """Base class of every error raised by xensr."""

    #: The helper's last log lines (text), oldest first, when known.
    log_tail: Sequence[str] = ()

    def with_log_tail(self, lines: Sequence[str]) -> "XensrError":
        self.log_tail = tuple(lines)
        return self

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\nhelper's last log lines:\n" + "\n".join(
                "  " + line for line in self.log_tail
            )
        return text


class HelperStartError(XensrError, OSError):
    """The helper could not be started (not found, not executable, ...).

    ``errno`` and ``filename`` are those of the failed ``execve``.
    """

    def __init__(self, errno: int, message: str, filename: Optional[str] = None):
        OSError.__init__(self, errno, message, filename)

    def __str__(self) -> str:  # OSError's formatting, plus the log tail
        return OSError.__str__(self)


class HelperExitError(XensrError):
    """The helper ended badly: non-zero status, a signal, or too early.

    ``signal`` is set when a signal ended it, else ``status`` is its exit
    status when known: non-zero (``reason`` "status"), or 0 when it exited
    without signalling completion (``reason`` "no-completion") or without
    providing restore results ("no-results").  Both are None when someone
    else reaped it (``reason`` "lost").
    """

    def __init__(
        self,
        message: str,
        *,
        pid: Optional[int] = None,
        status: Optional[int] = None,
        signal: Optional[int] = None,
        core_dumped: bool = False,
        reason: str = "status",
    ):
        super().__init__(message)
        self.pid = pid
        self.status = status
        self.signal = signal
        self.core_dumped = core_dumped
        self.reason = reason

    @property
    def signal_name(self) -> Optional[str]:
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"


class ProtocolError(XensrError):
    """The helper sent something that breaks the wire protocol.

    ``msgtype`` is the message number (None if not yet known), ``msgname``
    its name in the table, ``offset`` the byte offset in the frame body
    (the u16 type is at offset 0) where the problem was found.
    """

    def __init__(
        self,
        message: str,
        *,
        msgtype: Optional[int] = None,
        msgname: Optional[str] = None,
        offset: Optional[int] = None,
    ):
        super().__init__(message)
        self.msgtype = msgtype
        self.msgname = msgname
        self.offset = offset


class ShortFrameError(ProtocolError):
    """A field does not fit in what is left of the frame body."""


class TrailingBytesError(ProtocolError):
    """Bytes are left over after the last field of the message."""


class UnknownMessageError(ProtocolError):
    """The message type is not in the table."""


class WrongDirectionError(ProtocolError):
    """The message type exists but is not valid for this direction."""


class EmptyStringError(ProtocolError):
    """A STRING has length 0 (it must at least hold its NUL)."""


class UnterminatedStringError(ProtocolError):
    """A STRING does not end in a NUL byte."""


class RuntFrameError(ProtocolError):
    """A frame's length field announces a body too short to hold even the
    u16 message type (0 or 1 bytes)."""


class UnexpectedCallbackError(ProtocolError):
    """A callback message arrived whose cbflags bit was not set."""


class TruncatedFrameError(ProtocolError):
    """The helper's stdout ended in the middle of a frame."""


class StalledFrameError(ProtocolError):
    """The helper began a frame and did not finish it within the
    operation's ``frame_timeout`` (``seconds``); ``offset`` is how many
    bytes of it arrived."""

    def __init__(self, message: str, *, offset: Optional[int] = None,
                 seconds: float = 0.0):
        super().__init__(message, offset=offset)
        self.seconds = seconds


class CallbackError(XensrError):
    """A callback raised; the exception is chained as ``__cause__``."""

    def __init__(self, message: str, *, callback: Optional[str] = None):
        super().__init__(message)
        self.callback = callback


class Aborted(XensrError):
    """The operation was aborted by the caller (or cancelled)."""


class HelperTimeout(XensrError, TimeoutError):
    """The operation ran past its timeout or idle timeout."""

    def __init__(self, message: str, *, kind: str = "timeout", seconds: float = 0.0):
        XensrError.__init__(self, message)
        self.kind = kind
        self.seconds = seconds


class SaveRestoreError(XensrError):
    """The helper completed, but libxenguest reported failure.

    ``retval`` is what xc_domain_save/xc_domain_restore returned and
    ``errno`` the errno of the failing call.
    """

    def __init__(self, message: str, *, retval: int, errno: int):
        super().__init__(message)
        self.retval = retval
        self.errno = errno

    @property
    def strerror(self) -> str:
        if self.errno <= 0:
            return "unknown error"
        try:
            return os.strerror(self.errno)
        except (ValueError, OverflowError):   # beyond a C int
            return f"errno {self.errno}"

    @property
    def errno_name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


class StreamFormatError(XensrError, ValueError):
    """A save file or migration stream is malformed.

    ``offset`` is the byte offset in the file/stream where the problem is.
    """

    def __init__(self, message: str, *, offset: int, reason: str = ""):
        super().__init__(f"offset {offset}: {message}")
        self.offset = offset
        self.reason = reason or message


class ToolstackError(XensrError):
    """An operation on the host around the helper failed: looking a domain
    up, suspending, resuming, renaming, creating or destroying it."""

    def __init__(self, message: str, domid: Optional[int] = None):
        super().__init__(message)
        self.domid = domid


class DomainNotFound(ToolstackError, LookupError):
    """No domain has that name or domid."""


class SuspendTimeout(ToolstackError, TimeoutError):
    """The guest did not acknowledge a suspend request in time.  It was
    never suspended, so it must not be resumed (as xl does)."""


class CallbackWarning(UserWarning):
    """A callbacks object has an attribute that looks like a misspelled
    callback (``suspnd``): it is not called."""
