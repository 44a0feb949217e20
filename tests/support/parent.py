"""A reference parent for save/restore helpers (docs/protocol.md §2 to §8).

Small, independent and pure Python (struct, subprocess, poll): it runs any
helper binary that speaks Xen 4.17's libxl-save-helper protocol -- Debian's
``libxl-save-helper`` or xensr's ``xensr-save-helper`` -- in either mode,
with arbitrary cbflags, answers its callbacks by a reply policy and returns a
:class:`Transcript` of everything that happened.  Nothing here comes from
xensr itself, so it can referee between helpers.

Unlike libxl it is strict: a frame it cannot decode, a type not valid for
the direction, a STRING without its NUL, trailing bytes, or a callback
message whose cbflags bit is not set is recorded as
``Transcript.protocol_error`` (with the byte offset in the helper's stdout)
and the helper is killed.  Timeouts (whole run, and no output for a while)
kill and reap the helper too, so a test never hangs.

    t = run_helper(helper, "save", save_args(domid), io_fd=fd, env=host.env)
    assert t.complete["retval"] == 0
"""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "MessageSpec", "MESSAGES", "Message", "Transcript", "Replies", "Control",
    "run_helper", "save_args", "restore_args", "save_argv", "restore_argv",
    "CLOSE_STDIN", "NO_REPLY", "KILL", "TERM",
    "CBFLAGS_SAVE_PLAIN", "CBFLAGS_SAVE_REMUS", "CBFLAGS_SAVE_COLO",
    "CBFLAGS_RESTORE_PLAIN", "CBFLAGS_RESTORE_REMUS", "CBFLAGS_RESTORE_COLO",
]

# Values libxl 4.17 passes (docs/protocol.md §5.3).
CBFLAGS_SAVE_PLAIN = 136
CBFLAGS_SAVE_REMUS = 184
CBFLAGS_SAVE_COLO = 248
CBFLAGS_RESTORE_PLAIN = 768
CBFLAGS_RESTORE_REMUS = 800
CBFLAGS_RESTORE_COLO = 888


@dataclass(frozen=True)
class MessageSpec:
    """One row of the message table.

    ``dirs``: "s", "r" or "sr"; ``reply``: None, "W" or "A"; ``callback``:
    True for ``x`` messages (their presence is a cbflags bit, ``1 << number``);
    ``fields``: (name, type) with type one of u32 i32 uint int ulong long
    xen_pfn STRING BLOCK.
    """

    name: str
    dirs: str
    reply: Optional[str]
    callback: bool
    fields: Tuple[Tuple[str, str], ...] = ()


MESSAGES: Dict[int, MessageSpec] = {
    1: MessageSpec("log", "sr", None, False,
                   (("level", "u32"), ("errnoval", "i32"),
                    ("context", "STRING"), ("formatted", "STRING"))),
    2: MessageSpec("progress", "sr", None, False,
                   (("context", "STRING"), ("doing_what", "STRING"),
                    ("done", "ulong"), ("total", "ulong"))),
    3: MessageSpec("suspend", "sr", "A", True),
    4: MessageSpec("postcopy", "sr", "A", True),
    5: MessageSpec("checkpoint", "sr", "A", True),
    6: MessageSpec("wait_checkpoint", "sr", "A", True),
    7: MessageSpec("switch_qemu_logdirty", "s", "A", True,
                   (("domid", "u32"), ("enable", "uint"))),
    8: MessageSpec("static_data_done", "r", "W", True, (("missing", "uint"),)),
    9: MessageSpec("restore_results", "r", None, True,
                   (("store_gfn", "xen_pfn"), ("console_gfn", "xen_pfn"))),
    10: MessageSpec("complete", "sr", "W", False,
                    (("retval", "int"), ("errnoval", "int"))),
}

_SCALARS = {
    "u32": "=I", "i32": "=i", "uint": "=I", "int": "=i",
    "ulong": "=Q", "long": "=q", "xen_pfn": "=Q",
}

# Reply sentinels.
CLOSE_STDIN = "close-stdin"   # close the reply pipe: the helper reads EOF
NO_REPLY = "no-reply"         # never answer (the helper waits)
KILL = "kill"                 # SIGKILL the helper instead of answering
TERM = "term"                 # SIGTERM the helper, then answer by default


@dataclass
class Message:
    number: int
    name: str
    fields: Dict[str, Any]
    raw: bytes            # the frame body (u16 type + arguments)
    offset: int           # byte offset of the frame in the helper's stdout

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __repr__(self) -> str:
        return f"<{self.number} {self.name} {self.fields}>"


@dataclass
class Transcript:
    argv: List[str]
    messages: List[Message] = field(default_factory=list)
    replies: List[Tuple[Message, Any]] = field(default_factory=list)
    returncode: Optional[int] = None      # Popen style: -N for signal N
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: Optional[str] = None       # None, "timeout" or "idle"
    protocol_error: Optional[str] = None
    protocol_error_offset: Optional[int] = None
    killed_by_parent: bool = False
    idle_hooks: int = 0                   # times on_idle was called
    pending: int = 0                      # undecoded bytes left (partial frame)
    duration: float = 0.0

    @property
    def exit_status(self) -> Optional[int]:
        rc = self.returncode
        return rc if rc is not None and rc >= 0 else None

    @property
    def signal(self) -> Optional[int]:
        rc = self.returncode
        return -rc if rc is not None and rc < 0 else None

    @property
    def calls(self) -> List[str]:
        """Names of the messages other than log and progress, in order."""
        return [m.name for m in self.messages if m.number not in (1, 2)]

    @property
    def logs(self) -> List[Message]:
        return [m for m in self.messages if m.number == 1]

    @property
    def progress(self) -> List[Message]:
        return [m for m in self.messages if m.number == 2]

    def find(self, name: str) -> List[Message]:
        return [m for m in self.messages if m.name == name]

    @property
    def complete(self) -> Optional[Message]:
        done = self.find("complete")
        return done[-1] if done else None

    @property
    def restore_results(self) -> List[Message]:
        return self.find("restore_results")

    def log_text(self) -> str:
        return "\n".join(
            f"{m['context']}: [{m['level']}] {m['formatted']}"
            + (f" (errno {m['errnoval']})" if m["errnoval"] not in (0, -1) else "")
            for m in self.logs)

    def normalized(self, skip_first_log: bool = True) -> List[Tuple[int, Dict[str, Any], Any]]:
        """(number, fields, reply) per message, for comparing two helpers'
        runs; the first log line (the helper's greeting) is left out."""
        replies = {id(m): v for m, v in self.replies}
        msgs = self.messages[1:] if skip_first_log and self.messages and \
            self.messages[0].number == 1 else self.messages
        return [(m.number, m.fields, replies.get(id(m))) for m in msgs]

    def summary(self) -> str:
        return (f"argv={self.argv} rc={self.returncode} timed_out={self.timed_out} "
                f"protocol_error={self.protocol_error!r} calls={self.calls}\n"
                f"stderr={self.stderr[-2000:]!r}\nlogs:\n{self.log_text()[-4000:]}")


class Replies:
    """libxl's answers, with overrides.

    Defaults: suspend 1, postcopy 1, wait_checkpoint 1, switch_qemu_logdirty
    0, static_data_done 0, complete 0; checkpoint in a Remus save answers 1
    for the first ``checkpoints`` calls then 0 (so the stream carries
    ``checkpoints + 1`` CHECKPOINT records), in a COLO save (stream type 2,
    where 0 is an error) 1 -- wait_checkpoint ends COLO --, in a restore
    ``restore_checkpoint`` (1 = XGR_CHECKPOINT_SUCCESS); precopy_policy (an
    extension message, if the table has one) answers as libxenguest's own
    policy would.

    ``overrides`` maps a message name to an int, a list of ints (one per
    call, the last one repeated), a sentinel (CLOSE_STDIN, NO_REPLY, KILL,
    TERM), or a callable ``(message, transcript) -> reply``.
    """

    def __init__(self, overrides: Optional[Dict[str, Any]] = None, *,
                 checkpoints: int = 0, restore_checkpoint: int = 1):
        self.overrides = dict(overrides or {})
        self.checkpoints = checkpoints
        self.restore_checkpoint = restore_checkpoint
        self.counts: Dict[str, int] = {}

    def __call__(self, msg: Message, t: Transcript, mode: str) -> Any:
        n = self.counts.get(msg.name, 0)
        self.counts[msg.name] = n + 1
        if msg.name in self.overrides:
            rule = self.overrides[msg.name]
            if callable(rule):
                return rule(msg, t)
            if isinstance(rule, (list, tuple)):
                return rule[min(n, len(rule) - 1)]
            return rule
        return self.default(msg, n, mode, t)

    def default(self, msg: Message, n: int, mode: str, t: Optional[Transcript] = None) -> int:
        name = msg.name
        if name == "checkpoint":
            if mode == "save":
                if t is not None and t.argv and t.argv[-1] == "2":
                    return 1            # COLO: 0 would be an error
                return 1 if n < self.checkpoints else 0
            return self.restore_checkpoint
        if name in ("suspend", "postcopy", "wait_checkpoint"):
            return 1
        if name == "precopy_policy":
            dirty = msg.fields.get("dirty_count", -1)
            stop = (0 <= dirty < 50) or msg.fields.get("iteration", 0) >= 5
            return 1 if stop else 0
        return 0


class Control:
    """Handed to ``on_message`` hooks: act on the running helper."""

    def __init__(self, proc: subprocess.Popen, t: Transcript):
        self._proc = proc
        self._t = t

    @property
    def pid(self) -> int:
        return self._proc.pid

    def terminate(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._t.killed_by_parent = True
            self._proc.kill()


def save_args(domid: int, xcflags: int = 0, cbflags: int = CBFLAGS_SAVE_PLAIN,
              stream_type: int = 0) -> List[int]:
    """The numbers after IO_FD RECV_FD for --save-domain."""
    return [domid, xcflags, cbflags, stream_type]


def restore_args(domid: int, store_evtchn: int = 1, store_domid: int = 0,
                 console_evtchn: int = 2, console_domid: int = 0,
                 cbflags: int = CBFLAGS_RESTORE_PLAIN, stream_type: int = 0) -> List[int]:
    """The numbers after IO_FD SEND_BACK_FD for --restore-domain."""
    return [domid, store_evtchn, store_domid, console_evtchn, console_domid,
            cbflags, stream_type]


def save_argv(helper: str, io_fd: int, back_fd: int, args: Sequence[int]) -> List[str]:
    return [str(helper), "--save-domain", str(io_fd), str(back_fd), *map(str, args)]


def restore_argv(helper: str, io_fd: int, back_fd: int, args: Sequence[int]) -> List[str]:
    return [str(helper), "--restore-domain", str(io_fd), str(back_fd), *map(str, args)]


class _Violation(Exception):
    def __init__(self, reason: str, offset: int):
        super().__init__(reason)
        self.offset = offset


def _decode(body: bytes, base: int, mode: str, cbflags: Optional[int],
            table: Dict[int, MessageSpec]) -> Message:
    if len(body) < 2:
        raise _Violation(f"frame body of {len(body)} bytes has no message type", base)
    (number,) = struct.unpack_from("=H", body, 0)
    spec = table.get(number)
    if spec is None:
        raise _Violation(f"unknown message type {number}", base)
    if mode[0] not in spec.dirs:
        raise _Violation(f"message {number} ({spec.name}) not valid in a {mode}", base)
    if spec.callback and cbflags is not None and not cbflags & (1 << number):
        raise _Violation(f"callback {spec.name} without its cbflags bit "
                         f"(cbflags {cbflags:#x})", base)
    pos = 2
    fields: Dict[str, Any] = {}
    for fname, ftype in spec.fields:
        if ftype in ("STRING", "BLOCK"):
            if len(body) - pos < 4:
                raise _Violation(f"{spec.name}.{fname}: short length", base + pos)
            (length,) = struct.unpack_from("=I", body, pos)
            pos += 4
            if len(body) - pos < length:
                raise _Violation(f"{spec.name}.{fname}: {length} bytes do not fit",
                                 base + pos)
            data = body[pos:pos + length]
            if ftype == "STRING":
                if length == 0 or data[-1] != 0:
                    raise _Violation(f"{spec.name}.{fname}: STRING without its NUL",
                                     base + pos)
                fields[fname] = data[:-1].decode("utf-8", "replace")
            else:
                fields[fname] = data
            pos += length
        else:
            fmt = _SCALARS[ftype]
            size = struct.calcsize(fmt)
            if len(body) - pos < size:
                raise _Violation(f"{spec.name}.{fname}: short field", base + pos)
            (fields[fname],) = struct.unpack_from(fmt, body, pos)
            pos += size
    if pos != len(body):
        raise _Violation(f"{spec.name}: {len(body) - pos} trailing bytes", base + pos)
    return Message(number, spec.name, fields, body, base - 2)


def run_helper(helper: Union[str, os.PathLike], mode: str, args: Sequence[int] = (), *,
               io_fd: int, back_fd: int = -1, env: Optional[Dict[str, str]] = None,
               replies: Union[Replies, Callable, Dict[str, Any], None] = None,
               timeout: float = 60.0, idle_timeout: Optional[float] = None,
               pass_fds: Iterable[int] = (), extra_messages: Optional[Dict[int, MessageSpec]] = None,
               on_message: Optional[Callable[[Message, Control], None]] = None,
               on_idle: Optional[Callable[[Control], None]] = None,
               close_after_spawn: Iterable[int] = (),
               argv: Optional[List[str]] = None) -> Transcript:
    """Run ``helper`` in ``mode`` ("save" or "restore") and drive it to the end.

    ``args`` are the numbers after the two fds (see :func:`save_args`,
    :func:`restore_args`).  ``io_fd`` (and ``back_fd`` unless -1) are passed
    to the helper under the same numbers.  ``replies`` is a :class:`Replies`,
    a dict of overrides, or a callable ``(message, transcript, mode)``.
    ``argv`` replaces the computed command line entirely.  ``on_message``
    is called with each decoded message (before any reply) and a
    :class:`Control`; ``on_idle``, if given, is called once when the helper
    has been quiet for ``idle_timeout`` seconds, and the helper is killed
    only when it stays quiet for another ``idle_timeout``.
    ``close_after_spawn`` fds are closed in this process once the helper
    has them (pipe ends only the helper should hold, so that EOF travels).
    The helper is always reaped; on a timeout or protocol error it is
    killed first.
    """
    if mode not in ("save", "restore"):
        raise ValueError(f"mode must be 'save' or 'restore', not {mode!r}")
    table = dict(MESSAGES)
    table.update(extra_messages or {})
    if argv is None:
        build = save_argv if mode == "save" else restore_argv
        argv = build(str(helper), io_fd, back_fd, args)
    fds = {io_fd, *pass_fds}
    if back_fd >= 0:
        fds.add(back_fd)
    t = Transcript(argv=list(argv))
    start = time.monotonic()
    proc = subprocess.Popen(argv, executable=str(helper),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=tuple(sorted(fds)),
                            env=env, close_fds=True)
    for fd in close_after_spawn:
        os.close(fd)
    run = _Run(proc, t, mode, table, _reply_policy(replies), start=start,
               cbflags=_cbflags(mode, args), timeout=timeout,
               idle_timeout=idle_timeout, on_message=on_message, on_idle=on_idle)
    try:
        run.serve()
        run.check_trailing_bytes()
        run.reap()
    finally:
        run.close()
    return run.finish()


def _reply_policy(replies: Union[Replies, Callable, Dict[str, Any], None]) -> Callable:
    if replies is None:
        return Replies()
    if isinstance(replies, dict):
        return Replies(replies)
    return replies


def _cbflags(mode: str, args: Sequence[int]) -> Optional[int]:
    """CBFLAGS from the argument list, None if it has none (a bad argv test)."""
    try:
        return int(args[2] if mode == "save" else args[5])
    except (IndexError, ValueError, TypeError):
        return None


class _Run:
    """One helper being driven: its pipes, the frame buffer, the deadlines
    and the transcript being written."""

    def __init__(self, proc: subprocess.Popen, t: Transcript, mode: str,
                 table: Dict[int, MessageSpec], replies: Callable, *, start: float,
                 cbflags: Optional[int], timeout: float, idle_timeout: Optional[float],
                 on_message: Optional[Callable[[Message, Control], None]],
                 on_idle: Optional[Callable[[Control], None]]):
        self.proc = proc
        self.t = t
        self.mode = mode
        self.table = table
        self.replies = replies
        self.cbflags = cbflags
        self.on_message = on_message
        self.on_idle = on_idle
        self.ctl = Control(proc, t)
        self.out_fd, self.err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        self.open_fds = {self.out_fd, self.err_fd}
        self.stdin_open = True
        self.buf = bytearray()
        self.consumed = 0            # stdout offset of buf[0]
        self.out_chunks: List[bytes] = []
        self.err_chunks: List[bytes] = []
        self.start = start
        self.last_activity = start
        self.deadline = start + timeout
        self.idle_timeout = idle_timeout

    def stop(self, reason: Optional[str] = None) -> None:
        if reason:
            self.t.timed_out = reason
        if self.proc.poll() is None:
            self.t.killed_by_parent = True
            self.proc.kill()

    def reply(self, msg: Message, value: Any) -> None:
        self.t.replies.append((msg, value))
        if value == NO_REPLY:
            return
        if value == KILL:
            self.ctl.kill()
            return
        if value == CLOSE_STDIN:
            if self.stdin_open:
                self.proc.stdin.close()
                self.stdin_open = False
            return
        if value == TERM:
            self.ctl.terminate()
            return
        if self.stdin_open:
            try:
                os.write(self.proc.stdin.fileno(), struct.pack("=i", int(value)))
            except BrokenPipeError:
                pass

    def serve(self) -> None:
        """Read both pipes until the helper closes them."""
        poller = select.poll()
        for fd in self.open_fds:
            poller.register(fd, select.POLLIN)
        while self.open_fds:
            wait = self._wait()
            if wait is None:
                continue
            for fd, _ev in poller.poll(max(0, int(wait * 1000)) + 1):
                if not self._read(fd):
                    poller.unregister(fd)
                    self.open_fds.discard(fd)

    def _wait(self) -> Optional[float]:
        """Seconds to poll for; None when the idle hook just ran.  Past a
        deadline the helper is killed and ten more seconds are given to
        drain what is left (the pipes close once it is dead)."""
        now = time.monotonic()
        wait = self.deadline - now
        if self.idle_timeout is not None:
            wait = min(wait, self.last_activity + self.idle_timeout - now)
        if wait <= 0 and self.on_idle is not None and now < self.deadline:
            hook, self.on_idle = self.on_idle, None
            self.t.idle_hooks += 1
            hook(self.ctl)
            self.last_activity = time.monotonic()
            return None
        if wait <= 0:
            self.stop("timeout" if now >= self.deadline else "idle")
            self.deadline = now + 10
            self.idle_timeout = None
            wait = 10
        return wait

    def _read(self, fd: int) -> bool:
        """One read from fd; False at its end."""
        try:
            data = os.read(fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            return False
        self.last_activity = time.monotonic()
        if fd == self.err_fd:
            self.err_chunks.append(data)
            return True
        self.out_chunks.append(data)
        if self.t.protocol_error is None:
            self.buf += data
            self._frames()
        return True

    def _frames(self) -> None:
        """Decode and answer every whole frame in the buffer."""
        t, buf = self.t, self.buf
        while t.protocol_error is None and len(buf) >= 2:
            (length,) = struct.unpack_from("=H", buf, 0)
            if len(buf) < 2 + length:
                break
            body = bytes(buf[2:2 + length])
            base = self.consumed + 2
            del buf[:2 + length]
            self.consumed += 2 + length
            try:
                msg = _decode(body, base, self.mode, self.cbflags, self.table)
            except _Violation as v:
                t.protocol_error = str(v)
                t.protocol_error_offset = v.offset
                self.stop()
                break
            t.messages.append(msg)
            if self.on_message is not None:
                self.on_message(msg, self.ctl)
            if self.table[msg.number].reply:
                self.reply(msg, self.replies(msg, t, self.mode))

    def check_trailing_bytes(self) -> None:
        t = self.t
        if self.buf and t.protocol_error is None and t.timed_out is None:
            t.protocol_error = f"stdout ended in the middle of a frame ({len(self.buf)} bytes)"
            t.protocol_error_offset = self.consumed

    def reap(self) -> None:
        remaining = max(0.1, self.deadline - time.monotonic())
        try:
            self.proc.wait(remaining)
        except subprocess.TimeoutExpired:
            self.stop(self.t.timed_out or "timeout")
            self.proc.wait()

    def close(self) -> None:
        """Kill and reap the helper if it is still running; close the pipes."""
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if f is not None and not f.closed:
                    f.close()
            except OSError:
                pass

    def finish(self) -> Transcript:
        t = self.t
        t.returncode = self.proc.returncode
        t.pending = len(self.buf)
        t.stdout = b"".join(self.out_chunks)
        t.stderr = b"".join(self.err_chunks)
        t.duration = time.monotonic() - self.start
        return t
