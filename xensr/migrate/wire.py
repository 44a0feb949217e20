"""What ``xl migrate`` and ``xl migrate-receive`` put on the wire around the
libxl v2 stream, and the errors of a migration.

The exchange, sender S and receiver R (Xen 4.17 to 4.21, unchanged)::

    R -> S  BANNER (54 bytes, newline, no NUL)
    S -> R  xl header and JSON configuration (an xl save file's first bytes)
    S -> R  libxl v2 stream up to its END (the libxc stream inside)
    R -> S  READY (34 bytes, NUL included)
    S -> R  GO (44 bytes)                       S renamed its copy first
    R -> S  REPORT (39 bytes) and one status byte (0: the copy runs)
    R -> S  GO again, only after a nonzero status (S may resume)

Every fixed message is read for exactly its length and compared whole; no
step has a time limit (xl has none).
"""

from __future__ import annotations

import errno as _errno
import shlex
from typing import List, Optional, Sequence

from ..errors import XensrError

__all__ = [
    "BANNER", "READY", "GO", "REPORT", "STATUS_OK", "STATUS_BAD_GO", "STATUS_FAIL",
    "INCOMING_SUFFIX", "MIGRATEDAWAY_SUFFIX", "STAGES",
    "MigrationError", "PeerClosed", "UnexpectedMessage", "TargetFailed",
    "HandshakeUndefined", "check_fixed", "receiver_args", "rune",
]

#: The receiver's first bytes (written without the string's NUL).
BANNER = b"xl migration receiver ready, send binary domain data.\n"
#: The receiver has the whole stream and a paused copy (NUL included).
READY = b"domain received, ready to unpause\0"
#: The sender's permission to unpause; also the receiver's permission to
#: resume the source after a failed unpause.
GO = b"domain is yours, you are cleared to unpause\0"
#: Precedes the status byte.
REPORT = b"my copy unpause results are as follows\0"

#: Status bytes: success; the GO message was not GO (xl's -1); a failed
#: libxl call gives its negated error code (ERROR_FAIL, -3, gives 3).
STATUS_OK = 0
STATUS_BAD_GO = 0xFF
STATUS_FAIL = 3

INCOMING_SUFFIX = "--incoming"
MIGRATEDAWAY_SUFFIX = "--migratedaway"

#: The stages a migration fails in, in the order they happen.
STAGES = ("banner", "header", "stream", "ready", "go", "report")

# What is left of the source guest when a sender fails (MigrationError.source).
SOURCE_UNTOUCHED = "untouched"      # never suspended, still running
SOURCE_RESUMED = "resumed"          # suspended, then resumed (suspend-cancel)
SOURCE_NOT_RESUMED = "not-resumed"  # never acknowledged the suspend: left alone
SOURCE_UNDEFINED = "undefined"      # past GO: check both ends


class MigrationError(XensrError):
    """A migration failed.

    ``stage``: one of :data:`STAGES`; ``side``: "sender" or "receiver";
    ``source`` (sender): what became of the source guest (``"untouched"``,
    ``"resumed"``, ``"not-resumed"`` when it never acknowledged the
    suspend, ``"undefined"`` after GO); ``destination`` (receiver):
    ``"destroyed"``, ``"none"`` or ``"kept"``.  The underlying error, if
    any, is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, stage: str, side: str,
                 source: Optional[str] = None, destination: Optional[str] = None):
        super().__init__(f"migration {side}, {stage}: {message}")
        self.stage = stage
        self.side = side
        self.source = source
        self.destination = destination


class PeerClosed(MigrationError):
    """The peer closed the connection (or died) where bytes were due."""


class UnexpectedMessage(MigrationError):
    """The peer sent something else than the fixed message due.
    ``expected`` and ``received`` are the bytes."""

    def __init__(self, message: str, *, expected: bytes, received: bytes, **kw: str):
        super().__init__(message, **kw)
        self.expected = expected
        self.received = received


class TargetFailed(MigrationError):
    """The receiver reported that its copy did not start (``status``, the
    byte it sent); the source was resumed after its GO back."""

    def __init__(self, message: str, *, status: int, **kw: str):
        super().__init__(message, **kw)
        self.status = status


class HandshakeUndefined(MigrationError):
    """The exchange broke after GO: neither side knows whether the other's
    copy runs.  Nothing was resumed or destroyed; check both ends."""


def _show(data: bytes) -> str:
    return repr(bytes(data[:60])) + ("..." if len(data) > 60 else "")


def check_fixed(data: bytes, expected: bytes, what: str, *, stage: str, side: str,
                **state: str) -> None:
    """Raise PeerClosed (short read) or UnexpectedMessage unless ``data``
    is ``expected``."""
    if len(data) < len(expected):
        raise PeerClosed(
            f"the peer closed the connection after {len(data)} of the {len(expected)} "
            f"bytes of {what}", stage=stage, side=side, **state)
    if data != expected:
        raise UnexpectedMessage(
            f"expected {what}, received {_show(data)}", expected=expected, received=bytes(data),
            stage=stage, side=side, **state)


def io_error(exc: OSError, what: str, *, stage: str, side: str, **state: str) -> MigrationError:
    """A read or write of the transport failed: a dead peer (EPIPE,
    ECONNRESET) is PeerClosed, anything else a MigrationError."""
    cls = PeerClosed if exc.errno in (_errno.EPIPE, _errno.ECONNRESET) else MigrationError
    err = cls(f"{what}: {exc.strerror or exc}", stage=stage, side=side, **state)
    err.__cause__ = exc
    return err


# ----------------------------------------------------------------------
# Starting the receiver: xl's rune

def receiver_args(*, program: str = "xl", no_daemon: bool = False, debug: bool = False,
                  paused: bool = False, verbose: int = 0, progress_cr: bool = False,
                  timestamps: bool = False) -> List[str]:
    """The receiver's command as ``xl migrate`` runs it on the other host:
    ``PROGRAM [-t] [-T] [-v...] migrate-receive [-e] [-d] [-p]``."""
    args = [program]
    if progress_cr:
        args.append("-t")
    if timestamps:
        args.append("-T")
    args += ["-v"] * verbose
    args.append("migrate-receive")
    if no_daemon:
        args.append("-e")
    if debug:
        args.append("-d")
    if paused:
        args.append("-p")
    return args


def rune(host: str, *, ssh_command: Optional[str] = "ssh",
         receiver: Sequence[str] = ("xl", "migrate-receive")) -> str:
    """The shell command (for ``sh -c``) that starts the receiver, as xl
    builds it: ``exec SSH HOST RECEIVER...``; with ``ssh_command`` empty
    (``-s ''``) HOST is the whole command and nothing is appended."""
    if ssh_command is None:
        ssh_command = "ssh"
    if ssh_command == "":
        return host
    # xl pastes the words unquoted; the receiver's words are plain options.
    return f"exec {ssh_command} {host} {' '.join(shlex.quote(a) for a in receiver)}"
