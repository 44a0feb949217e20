"""What a user would write instead of xensr: the parent side of the helper
protocol in plain Python, with ``subprocess``, ``os.read`` and ``struct``.

It is a competent version, not a strawman: reads are buffered (one
``os.read`` of up to 64 KiB, then every whole frame in it is decoded),
frames are decoded strictly (lengths, NUL-terminated strings, no trailing
bytes) and dispatched to handler methods, replies are native ints written
with ``os.write``.  Two drivers share the decoder: a blocking loop and an
asyncio one built on ``loop.add_reader`` (exit seen through a pidfd).
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
from typing import Any, Dict, List, Optional, Sequence, Tuple

_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_LOG_HEAD = struct.Struct("=II")
_U64X2 = struct.Struct("=QQ")
_I32X2 = struct.Struct("=ii")
_PRECOPY = struct.Struct("=IQq")
_INT = struct.Struct("=i")

MSG_LOG = 1
MSG_PROGRESS = 2
MSG_SUSPEND = 3
MSG_COMPLETE = 10
MSG_PRECOPY_POLICY = 11


class PyProtocolError(Exception):
    pass


def _string(body: bytes, off: int) -> Tuple[str, int]:
    if len(body) - off < 4:
        raise PyProtocolError(f"short string length at {off}")
    (n,) = _U32.unpack_from(body, off)
    off += 4
    if n == 0 or len(body) - off < n or body[off + n - 1] != 0:
        raise PyProtocolError(f"bad string at {off - 4}")
    return body[off:off + n - 1].decode("utf-8", "backslashreplace"), off + n


def decode(body: bytes) -> Tuple[int, tuple]:
    """One frame body -> (type, args); strict like the generated decoder."""
    if len(body) < 2:
        raise PyProtocolError("short body")
    (msgtype,) = _U16.unpack_from(body, 0)
    if msgtype == MSG_LOG:
        if len(body) < 10:
            raise PyProtocolError("short log")
        level, errnoval = _LOG_HEAD.unpack_from(body, 2)
        context, off = _string(body, 10)
        text, off = _string(body, off)
        args: tuple = (level, errnoval, context, text)
    elif msgtype == MSG_PROGRESS:
        context, off = _string(body, 2)
        what, off = _string(body, off)
        if len(body) - off < 16:
            raise PyProtocolError("short progress")
        done, total = _U64X2.unpack_from(body, off)
        off += 16
        args = (context, what, done, total)
    elif msgtype == MSG_PRECOPY_POLICY:
        if len(body) < 22:
            raise PyProtocolError("short precopy_policy")
        args = _PRECOPY.unpack_from(body, 2)
        off = 22
    elif msgtype == MSG_COMPLETE:
        if len(body) < 10:
            raise PyProtocolError("short complete")
        args = _I32X2.unpack_from(body, 2)
        off = 10
    elif msgtype == MSG_SUSPEND:
        args = ()
        off = 2
    else:
        raise PyProtocolError(f"unexpected message type {msgtype}")
    if off != len(body):
        raise PyProtocolError(f"{len(body) - off} trailing bytes")
    return msgtype, args


class NullHandler:
    """Handler whose methods do nothing (the benchmark's no-op callbacks)."""

    def log(self, level: int, errnoval: int, context: str, text: str) -> None:
        pass

    def progress(self, context: str, what: str, done: int, total: int) -> None:
        pass

    def precopy_policy(self, iteration: int, written: int, dirty: int) -> int:
        return 0

    def suspend(self) -> int:
        return 1


class _Parent:
    """Frame buffer and dispatch shared by both drivers."""

    def __init__(self, handler: Any) -> None:
        self.h = handler
        self.buf = b""
        self.frames = 0
        self.complete: Optional[Tuple[int, int]] = None

    def feed(self, data: bytes, wfd: int) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        end = len(buf)
        h = self.h
        while end - pos >= 2:
            (blen,) = _U16.unpack_from(buf, pos)
            if end - pos - 2 < blen:
                break
            body = buf[pos + 2:pos + 2 + blen]
            pos += 2 + blen
            msgtype, args = decode(body)
            self.frames += 1
            if msgtype == MSG_LOG:
                h.log(*args)
            elif msgtype == MSG_PROGRESS:
                h.progress(*args)
            elif msgtype == MSG_PRECOPY_POLICY:
                os.write(wfd, _INT.pack(h.precopy_policy(*args)))
            elif msgtype == MSG_SUSPEND:
                os.write(wfd, _INT.pack(h.suspend()))
            elif msgtype == MSG_COMPLETE:
                self.complete = args
                os.write(wfd, _INT.pack(0))
                break
        self.buf = buf[pos:]


def helper_argv(helper: str, io_fd: int, cbflags: int) -> List[str]:
    return [helper, "--save-domain", str(io_fd), "-1", "1", "0", str(cbflags), "0"]


def _reap(proc: subprocess.Popen) -> None:
    """Kill the helper if it still runs, reap it, close our pipe ends."""
    if proc.returncode is None:
        proc.kill()
        proc.wait()
    proc.stdin.close()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]


def run_blocking(helper: str, io_fd: int, cbflags: int, env: Dict[str, str],
                 handler: Any = None) -> _Parent:
    """Spawn the helper, serve it until complete, reap it."""
    parent = _Parent(handler or NullHandler())
    proc = subprocess.Popen(
        helper_argv(helper, io_fd, cbflags), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, pass_fds=(io_fd,), env=env, bufsize=0,
    )
    try:
        rfd = proc.stdout.fileno()  # type: ignore[union-attr]
        wfd = proc.stdin.fileno()  # type: ignore[union-attr]
        while parent.complete is None:
            data = os.read(rfd, 65536)
            if not data:
                raise PyProtocolError("EOF before complete")
            parent.feed(data, wfd)
        status = proc.wait()
    finally:
        _reap(proc)
    if status != 0:
        raise PyProtocolError(f"helper exited with status {status}")
    return parent


async def run_asyncio(helper: str, io_fd: int, cbflags: int,
                      env: Dict[str, str], handler: Any = None) -> _Parent:
    """The same with loop.add_reader on the helper's stdout and a pidfd."""
    loop = asyncio.get_running_loop()
    parent = _Parent(handler or NullHandler())
    proc = subprocess.Popen(
        helper_argv(helper, io_fd, cbflags), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, pass_fds=(io_fd,), env=env, bufsize=0,
    )
    rfd = proc.stdout.fileno()  # type: ignore[union-attr]
    wfd = proc.stdin.fileno()  # type: ignore[union-attr]
    os.set_blocking(rfd, False)
    pidfd = os.pidfd_open(proc.pid)
    done: asyncio.Future = loop.create_future()
    exited: asyncio.Future = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(rfd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            loop.remove_reader(rfd)
            done.set_exception(exc)
            return
        if not data:
            loop.remove_reader(rfd)
            if not done.done():
                done.set_exception(PyProtocolError("EOF before complete"))
            return
        try:
            parent.feed(data, wfd)
        except Exception as exc:
            loop.remove_reader(rfd)
            done.set_exception(exc)
            return
        if parent.complete is not None:
            loop.remove_reader(rfd)
            done.set_result(None)

    def child_exited() -> None:
        loop.remove_reader(pidfd)
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(rfd, readable)
    loop.add_reader(pidfd, child_exited)
    try:
        await done
        await exited
        status = proc.wait()
    finally:
        loop.remove_reader(rfd)
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _reap(proc)
    if status != 0:
        raise PyProtocolError(f"helper exited with status {status}")
    return parent


def bench_env(mode: str, n: int = 0, buffered: bool = False,
              base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["XENSR_BENCH_MODE"] = mode
    env["XENSR_BENCH_N"] = str(n)
    env["XENSR_BENCH_BUFFER"] = "1" if buffered else "0"
    return env


def parse_cparent(out: str) -> Dict[str, int]:
    fields = dict(item.split("=", 1) for item in out.split())
    return {k: int(v) for k, v in fields.items()}


def run_cparent(cparent: str, helper: str, mode: str, n: int,
                buffered: bool = False, poll: bool = False,
                extra: Sequence[str] = ()) -> Dict[str, int]:
    cmd = [cparent, *(["-p"] if poll else []), helper, mode, str(n),
           "1" if buffered else "0", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise PyProtocolError(
            f"C parent failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return parse_cparent(proc.stdout)
