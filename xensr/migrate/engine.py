"""Running a migration's steps: one exchange, any event loop.

Each side of a migration is a generator of steps (:class:`Read`,
:class:`Write`, :class:`Run`): it says what I/O it needs and gets the
outcome back (the bytes read, or the exception).  :class:`Exchange` runs
one such generator with the same loop interface as
:class:`xensr.Operation` (``fds`` / ``handle`` / ``next_deadline`` /
``handle_timeout``), so that many migrations share one thread;
:meth:`Exchange.run` blocks; :func:`run_async` runs it on asyncio, with
the save or restore driven by :mod:`xensr.aio` (coroutine callbacks work).

The transport's fds are made non-blocking while the exchange owns them
(the helper gets them blocking, as libxenguest needs: the operation
clears O_NONBLOCK for its run) and get their flags back at the end.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import os
import select
import selectors
import stat
import time
from dataclasses import dataclass
from typing import Any, Deque, Dict, Generator, List, Optional, Tuple, Union

from ..api import EVENT_READ, EVENT_WRITE, Operation
from ..errors import Aborted, XensrError

__all__ = ["Read", "Write", "Run", "Relay", "Steps", "Exchange", "run_async"]


@dataclass
class Read:
    """Read exactly ``n`` bytes (fewer only at EOF) from ``fd``; never more."""
    fd: int
    n: int


@dataclass
class Write:
    """Write all of ``data`` to ``fd``."""
    fd: int
    data: bytes


class Relay:
    """The bytes a save's helper writes, carried to the transport by this
    process: the helper writes to a pipe whose reader never goes away, so
    that a vanished peer never kills it with SIGPIPE (xensr's helper and
    libxl's start with SIGPIPE at its default action).  A failed write to
    the transport aborts the save instead: the helper unwinds, log-dirty
    goes off and the guest is left running.

    Make one, give :attr:`helper_fd` to the operation as its fd, and put
    both in a :class:`Run` step.
    """

    CHUNK = 1 << 20

    def __init__(self, dst: int):
        self.dst = dst
        self.src, self.helper_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.src, False)
        _grow_pipe(self.helper_fd, self.CHUNK)
        # A transport that is a pipe (ssh's stdin) gets the same room: in
        # a default pipe of 64 KiB, every splice moved a few KiB, and this
        # process woke for each.
        if stat.S_ISFIFO(os.fstat(dst).st_mode):
            _grow_pipe(dst, self.CHUNK)
        # What was read and not yet written: whole reads, the first one
        # from ``off`` on (no copying of what is left after a short write).
        self.chunks: Deque[bytes] = collections.deque()
        self.off = 0
        self.pending = 0
        self.eof = False
        self.error: Optional[OSError] = None
        self.dropping = False
        # splice(2) moves the bytes from the pipe to the transport without
        # copying them through this process; read/write where the
        # transport cannot take it.  When a splice would block,
        # ``wait_dst`` says whether the transport is what is full.
        self.splicing = hasattr(os, "splice")
        self.wait_dst = False
        #: Bytes written to the transport.
        self.total = 0

    def close_helper_end(self) -> None:
        if self.helper_fd >= 0:
            os.close(self.helper_fd)
            self.helper_fd = -1

    def close(self) -> None:
        self.close_helper_end()
        if self.src >= 0:
            os.close(self.src)
            self.src = -1

    def drop(self) -> None:
        """The save is being stopped: what the helper still writes is
        read and thrown away, so that a peer that stopped reading cannot
        hold the stop up."""
        self.dropping = True
        self._clear()

    def _clear(self) -> None:
        self.chunks.clear()
        self.off = 0
        self.pending = 0

    def fds(self) -> List[Tuple[int, int]]:
        if self.splicing and not self.dropping and self.error is None:
            if self.wait_dst:
                return [(self.dst, EVENT_WRITE)]
            return [] if self.eof else [(self.src, EVENT_READ)]
        out = []
        if not self.eof and self.pending < self.CHUNK:
            out.append((self.src, EVENT_READ))
        if self.pending and self.error is None and not self.dropping:
            out.append((self.dst, EVENT_WRITE))
        return out

    def move(self) -> bool:
        """Carry what can be carried now; False when the transport failed
        (self.error)."""
        if self.splicing and not self.dropping and self.error is None:
            return self._splice()
        self.pull()
        return self.push()

    def _splice(self) -> bool:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while True:
            try:
                n = os.splice(self.src, self.dst, self.CHUNK, flags=flags)
            except BlockingIOError:
                self.wait_dst = not _writable(self.dst)
                return True
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOSYS) and self.total == 0:
                    self.splicing = False       # not a socket or pipe: copy
                    return self.move()
                self.error = e
                return False
            if n == 0:
                self.eof = True
                return True
            self.total += n
            self.wait_dst = False

    def pull(self) -> None:
        """Read what the helper wrote (discarded once the transport failed)."""
        while not self.eof and self.pending < self.CHUNK:
            try:
                data = os.read(self.src, self.CHUNK)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not data:
                self.eof = True
                return
            if self.error is None and not self.dropping:
                self.chunks.append(data)
                self.pending += len(data)

    def push(self) -> bool:
        """Write to the transport; False when it failed (self.error)."""
        while self.chunks and self.error is None and not self.dropping:
            head = self.chunks[0]
            try:
                n = os.write(self.dst, memoryview(head)[self.off:])
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            except OSError as e:
                self.error = e
                self._clear()
                return False
            self.total += n
            self.pending -= n
            self.off += n
            if self.off == len(head):
                self.chunks.popleft()
                self.off = 0
        return self.error is None

    def finished(self) -> bool:
        if self.splicing and not self.dropping and self.error is None:
            return self.eof
        return self.eof and (not self.pending or self.error is not None or self.dropping)


def _grow_pipe(fd: int, size: int) -> None:
    """Make pipe ``fd`` hold at least ``size`` bytes if it can (a
    pipe larger than /proc/sys/fs/pipe-max-size needs CAP_SYS_RESOURCE,
    then the size it has works, slower); never shrink it."""
    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < size:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        pass


def _writable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return bool(p.poll(0))


@dataclass
class Run:
    """Run a save or restore to its end; its result, or its error raised
    (with a relay: its transport's OSError, if that failed first)."""
    op: Operation
    relay: Optional[Relay] = None


Step = Union[Read, Write, Run]
Steps = Generator[Step, Any, Any]


class Exchange:
    """One migration side's steps, loop-agnostic (see the module doc)."""

    def __init__(self, steps: Steps, fds: Tuple[int, ...], what: str):
        self._gen = steps
        self._what = what
        self._flags: Dict[int, bool] = {}
        self._own_fds = tuple(dict.fromkeys(fds))
        self._step: Optional[Step] = None
        self._buf = bytearray()
        self._off = 0
        self._state = "new"
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._aborted = False

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"{self._what} was already started")
        self._state = "running"
        for fd in self._own_fds:
            flags = os.get_blocking(fd)
            self._flags[fd] = flags
            os.set_blocking(fd, False)
        self._advance(None, None)

    def done(self) -> bool:
        return self._state == "done"

    def result(self) -> Any:
        if self._state != "done":
            raise RuntimeError(f"{self._what} has not finished")
        if self._error is not None:
            raise self._error
        return self._result

    def abort(self) -> None:
        """Stop: a running save or restore is aborted (its helper unwinds),
        a pending read or write fails with Aborted; the steps then clean up
        as for any failure."""
        if self._state == "new":
            self._state = "done"
            self._error = Aborted(f"{self._what} aborted before it started")
            self._gen.close()
            return
        if self._state != "running":
            return
        self._aborted = True
        step = self._step
        if isinstance(step, Run):
            if step.relay is not None:
                step.relay.drop()
            step.op.abort()
        else:
            self._advance(None, Aborted(f"{self._what} aborted"))

    def close(self) -> None:
        """Release everything now (a running helper is killed)."""
        if self._state == "running":
            step = self._step
            if isinstance(step, Run):
                if step.relay is not None:
                    step.relay.drop()
                step.op.close()
                self._finish_run(step)
            if self._state == "running":
                self.abort()
            while self._state == "running":
                step = self._step
                if isinstance(step, Run):
                    if step.relay is not None:
                        step.relay.drop()
                    step.op.close()
                    self._finish_run(step)
                else:
                    self._advance(None, Aborted(f"{self._what} closed while running"))
        elif self._state == "new":
            self.abort()

    # -- stepping -----------------------------------------------------------

    def _advance(self, value: Any, exc: Optional[BaseException]) -> None:
        """Feed the outcome of the last step; start the next one."""
        while True:
            try:
                if exc is not None:
                    step = self._gen.throw(exc)
                else:
                    step = self._gen.send(value)
            except StopIteration as stop:
                self._end(stop.value, None)
                return
            except BaseException as e:
                self._end(None, e)
                return
            exc = None
            value = None
            self._step = step
            self._buf = bytearray()
            self._off = 0
            if isinstance(step, Run):
                try:
                    if step.op.pid is None and not step.op.done():
                        step.op.start()
                        if self._aborted:
                            step.op.abort()
                except BaseException as e:
                    if step.relay is not None:
                        step.relay.close()
                    exc = e
                    continue
                if self._run_finished(step):
                    value, exc = self._op_outcome(step)
                    continue
                return
            if self._aborted:
                exc = Aborted(f"{self._what} aborted")
                continue
            # Try the I/O at once: most steps complete without waiting.
            try:
                if self._try_io():
                    value = self._io_value()
                    continue
            except OSError as e:
                exc = e
                continue
            return

    def _end(self, value: Any, exc: Optional[BaseException]) -> None:
        self._state = "done"
        self._step = None
        self._result = value
        self._error = exc
        for fd, blocking in self._flags.items():
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass     # closed by the steps themselves
        self._flags = {}

    @staticmethod
    def _run_finished(step: Run) -> bool:
        """The operation is over and its relay has carried (or dropped)
        everything the helper wrote."""
        if not step.op.done():
            return False
        relay = step.relay
        if relay is None:
            return True
        relay.close_helper_end()        # the helper is gone: EOF comes
        relay.move()
        return relay.finished()

    @staticmethod
    def _op_outcome(step: Run) -> Tuple[Any, Optional[BaseException]]:
        relay = step.relay
        if relay is not None:
            relay.close()
            if relay.error is not None:
                return None, relay.error
        err = step.op.exception()
        if err is not None:
            return None, err
        return step.op.result(), None

    def _finish_run(self, step: Run) -> None:
        if self._step is step and self._run_finished(step):
            value, exc = self._op_outcome(step)
            self._advance(value, exc)

    def _try_io(self) -> bool:
        """Progress on the current Read/Write; True when complete."""
        step = self._step
        if isinstance(step, Read):
            while len(self._buf) < step.n:
                try:
                    chunk = os.read(step.fd, step.n - len(self._buf))
                except BlockingIOError:
                    return False
                except InterruptedError:
                    continue
                if not chunk:
                    return True         # EOF: the steps see a short read
                self._buf += chunk
            return True
        assert isinstance(step, Write)
        view = memoryview(step.data)
        while self._off < len(view):
            try:
                self._off += os.write(step.fd, view[self._off:])
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
        return True

    def _io_value(self) -> Optional[bytes]:
        return bytes(self._buf) if isinstance(self._step, Read) else None

    # -- the loop interface ---------------------------------------------------

    def fds(self) -> List[Tuple[int, int]]:
        if self._state != "running":
            return []
        step = self._step
        if isinstance(step, Run):
            fds = step.op.fds()
            if step.relay is not None:
                fds += step.relay.fds()
            return fds
        if isinstance(step, Read):
            return [(step.fd, EVENT_READ)]
        if isinstance(step, Write):
            return [(step.fd, EVENT_WRITE)]
        return []

    def handle(self, fd: int, events: int = EVENT_READ) -> None:
        if self._state != "running":
            return
        step = self._step
        if isinstance(step, Run):
            relay = step.relay
            if relay is not None and fd in (relay.src, relay.dst):
                if not relay.move():
                    step.op.abort()     # the peer is gone: the helper unwinds
            else:
                step.op.handle(fd, events)
            self._finish_run(step)
            return
        if step is None or fd != step.fd:
            return
        try:
            complete = self._try_io()
        except OSError as e:
            self._advance(None, e)
            return
        if complete:
            self._advance(self._io_value(), None)

    def next_deadline(self) -> Optional[float]:
        step = self._step
        if self._state == "running" and isinstance(step, Run):
            return step.op.next_deadline()
        return None

    def handle_timeout(self, now: Optional[float] = None) -> None:
        step = self._step
        if self._state == "running" and isinstance(step, Run):
            step.op.handle_timeout(now)
            self._finish_run(step)

    # -- blocking -------------------------------------------------------------

    def run(self) -> Any:
        """Start if needed and run to the end; the result or the error.
        Ctrl-C aborts (the helper unwinds, the source is put back), then
        raises KeyboardInterrupt."""
        if self._state == "new":
            self.start()
        interrupted: Optional[BaseException] = None
        sel = selectors.DefaultSelector()
        try:
            while self._state == "running":
                try:
                    self._wait(sel)
                except KeyboardInterrupt as exc:
                    if interrupted is None:
                        interrupted = exc
                        self.abort()
                    else:
                        self.close()
        finally:
            sel.close()
            if self._state == "running":
                self.close()
        if interrupted is not None:
            raise interrupted
        return self.result()

    def _wait(self, sel: selectors.BaseSelector) -> None:
        fds = self.fds()
        deadline = self.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        keys: Dict[int, int] = {}
        for fd, ev in fds:
            keys[fd] = keys.get(fd, 0) | ev
        for fd, ev in keys.items():
            sel.register(fd, ev)
        try:
            ready = sel.select(timeout) if keys else []
            if not keys and timeout:
                time.sleep(min(timeout, 1.0))
        finally:
            for fd in keys:
                sel.unregister(fd)
        for key, ev in ready:
            self.handle(key.fd, ev)
            if self._state != "running":
                return
        deadline = self.next_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            self.handle_timeout()


async def run_async(steps: Steps, fds: Tuple[int, ...], what: str) -> Any:
    """Run steps on the running asyncio loop: reads and writes wait with
    ``add_reader`` / ``add_writer``, saves and restores run through
    :func:`xensr.aio.run`.  Cancelling aborts the running save or restore
    (the steps then put the source back) and raises CancelledError."""
    from .. import aio

    loop = asyncio.get_running_loop()
    blocking = {fd: os.get_blocking(fd) for fd in dict.fromkeys(fds)}
    for fd in blocking:
        os.set_blocking(fd, False)
    value: Any = None
    exc: Optional[BaseException] = None
    cancelled: Optional[BaseException] = None
    try:
        while True:
            try:
                step = steps.throw(exc) if exc is not None else steps.send(value)
            except StopIteration as stop:
                if cancelled is not None:
                    raise cancelled
                return stop.value
            except BaseException as e:
                if cancelled is not None:
                    raise cancelled from e     # the steps' cleanup is done
                raise
            value, exc = None, None
            try:
                if isinstance(step, Run):
                    value = await _run_relayed(loop, step, aio.run)
                elif cancelled is not None:
                    exc = Aborted(f"{what} cancelled")
                else:
                    value = await _io(loop, step)
            except asyncio.CancelledError as e:
                # Let the steps clean up (resume the source, destroy a
                # half-made copy); re-raised at the end.
                if cancelled is None:
                    cancelled = e
                exc = Aborted(f"{what} cancelled")
            except (XensrError, OSError) as e:
                exc = e
    finally:
        steps.close()
        for fd, b in blocking.items():
            try:
                os.set_blocking(fd, b)
            except OSError:
                pass


async def _run_relayed(loop: asyncio.AbstractEventLoop, step: Run, run: Any) -> Any:
    """aio.run(op), with the relay's copying alongside on the same loop."""
    relay = step.relay
    if relay is None:
        return await run(step.op)
    op = step.op
    try:
        if op.pid is None and not op.done():
            op.start()
        task = asyncio.ensure_future(run(op))
        wake: "asyncio.Future[None]" = loop.create_future()
        readers: List[int] = []
        writers: List[int] = []

        def ready() -> None:
            if not wake.done():
                wake.set_result(None)

        try:
            while True:
                if task.done():
                    relay.close_helper_end()
                if not relay.move():
                    relay.drop()
                    op.abort()
                if task.done() and relay.finished():
                    break
                for fd, ev in relay.fds():
                    if ev & EVENT_READ:
                        loop.add_reader(fd, ready)
                        readers.append(fd)
                    else:
                        loop.add_writer(fd, ready)
                        writers.append(fd)
                task.add_done_callback(lambda t: ready())
                try:
                    await asyncio.shield(wake)
                finally:
                    for fd in readers:
                        loop.remove_reader(fd)
                    for fd in writers:
                        loop.remove_writer(fd)
                    readers, writers = [], []
                wake = loop.create_future()
        except asyncio.CancelledError:
            relay.drop()
            op.abort()
            try:
                await asyncio.shield(task)
            except BaseException:
                pass
            raise
        if relay.error is not None:
            task.exception()        # retrieved: the transport's error wins
            raise relay.error
        return task.result()
    finally:
        relay.close()


async def _io(loop: asyncio.AbstractEventLoop, step: Step) -> Optional[bytes]:
    if isinstance(step, Read):
        buf = bytearray()
        while len(buf) < step.n:
            try:
                chunk = os.read(step.fd, step.n - len(buf))
            except BlockingIOError:
                await _ready(loop, step.fd, False)
                continue
            if not chunk:
                break
            buf += chunk
        return bytes(buf)
    assert isinstance(step, Write)
    view = memoryview(step.data)
    off = 0
    while off < len(view):
        try:
            off += os.write(step.fd, view[off:])
        except BlockingIOError:
            await _ready(loop, step.fd, True)
    return None


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    fut: "asyncio.Future[None]" = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
