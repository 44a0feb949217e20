"""Transports: how a sender reaches its receiver.

Any connected socket or pair of fds will do (see
:func:`xensr.migrate.migrate_domain`).  :class:`CommandTransport` runs a
command whose stdin and stdout carry the migration, as ``xl migrate``
does: :meth:`CommandTransport.ssh` builds xl's rune
(``exec ssh HOST xl migrate-receive [-e] [-d] [-p]``), ``-s CMD`` replacing
``ssh``, and ``-s ''`` making HOST the whole command.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any, Optional

from ..errors import XensrError
from . import wire as W

__all__ = ["CommandTransport", "TransportError"]


class TransportError(XensrError):
    """The transport's command could not start, or ended badly.
    ``returncode`` as subprocess's (-N: signal N)."""

    def __init__(self, message: str, *, returncode: Optional[int] = None):
        super().__init__(message)
        self.returncode = returncode


class CommandTransport:
    """``sh -c COMMAND`` with its stdin as :attr:`send_fd` and its stdout
    as :attr:`recv_fd`; its stderr is this process's (the remote
    receiver's messages arrive there).  Use as a context manager, or call
    :meth:`close`: the pipes are closed and the command waited for
    (``wait_timeout`` seconds, as xl's 2, then SIGTERM, then SIGKILL)."""

    def __init__(self, command: str, *, wait_timeout: float = 2.0,
                 env: Optional[Any] = None, stderr: Any = None):
        self.command = command
        self.wait_timeout = wait_timeout
        try:
            self.process = subprocess.Popen(
                ["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, env=env, bufsize=0, close_fds=True)
        except OSError as e:
            raise TransportError(f"cannot run the transport command: {e}") from e
        assert self.process.stdin is not None and self.process.stdout is not None
        self.send_fd = self.process.stdin.fileno()
        self.recv_fd = self.process.stdout.fileno()
        self.returncode: Optional[int] = None

    @classmethod
    def ssh(cls, host: str, *, ssh_command: Optional[str] = "ssh", program: str = "xl",
            no_daemon: bool = False, debug: bool = False, paused: bool = False,
            verbose: int = 0, progress_cr: bool = False, timestamps: bool = False,
            **kw: Any) -> "CommandTransport":
        """The receiver on ``host`` started as ``xl migrate`` starts it;
        ``program`` is the remote command (``xl`` or ``xensr``)."""
        args = W.receiver_args(program=program, no_daemon=no_daemon, debug=debug,
                               paused=paused, verbose=verbose, progress_cr=progress_cr,
                               timestamps=timestamps)
        return cls(W.rune(host, ssh_command=ssh_command, receiver=args), **kw)

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> Optional[int]:
        """Close the pipes and reap the command; its exit status."""
        p = self.process
        for f in (p.stdin, p.stdout):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass
        if self.returncode is not None:
            return self.returncode
        try:
            self.returncode = p.wait(self.wait_timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            try:
                self.returncode = p.wait(self.wait_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                self.returncode = p.wait()
        return self.returncode

    def __enter__(self) -> "CommandTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CommandTransport {self.command!r} pid {self.process.pid}>"
