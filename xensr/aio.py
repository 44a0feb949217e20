"""Saving and restoring domains from asyncio.

    result = await xensr.aio.save_domain(domid, fd, callbacks, live=True)

Many operations run at once in one thread: each helper's fds are watched
with ``loop.add_reader`` / ``loop.add_writer`` and its deadlines with
``loop.call_at``.  Callbacks may be coroutine functions (the helper waits
for their result, the loop does not).  Cancelling the task aborts the
helper (SIGTERM, SIGKILL after ``kill_grace``), waits for it to exit,
releases everything, then raises :class:`asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, List, Optional, Set, Tuple

from .api import (EVENT_READ, EVENT_WRITE, FileDescriptor, Operation, OperationResult,
                  RestoreOperation, RestoreOptions, RestoreResult, SaveOperation,
                  SaveOptions, SaveResult, _options)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["run", "save_domain", "restore_domain"]


class _Driver:
    """Keeps the loop's registrations in step with one operation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, op: Operation,
                 done: "asyncio.Future[None]"):
        self.loop = loop
        self.op = op
        self.done = done
        self.readers: Set[int] = set()
        self.writers: Set[int] = set()
        self.timer: Optional[asyncio.TimerHandle] = None
        self.timer_at: Optional[float] = None
        self.last_fds: Optional[List[Tuple[int, int]]] = None
        # The callout's watch bits when sync() last looked.
        self.watch = -1
        self.tasks: Set["asyncio.Task[Any]"] = set()
        self.closed = False
        op._set_runner(self.run_awaitable)
        # abort()/reply() from elsewhere (a callback, a timer, a thread).
        op.set_listener(self.wake)

    def wake(self) -> None:
        if not self.closed:
            self.loop.call_soon_threadsafe(self.sync)

    def sync(self) -> None:
        if self.closed:
            return
        op = self.op
        if op.done():
            self.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.watch = op._callout.watch
        fds = op.fds()
        if fds != self.last_fds:    # most wake-ups change nothing
            self.last_fds = fds
            self._register(fds)
        deadline = op.next_deadline()
        if deadline != self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.timer_at = deadline
            if deadline is not None:
                when = self.loop.time() + (deadline - time.monotonic())
                self.timer = self.loop.call_at(when, self.on_timer)

    def _register(self, fds: List[Tuple[int, int]]) -> None:
        want_r: Set[int] = set()
        want_w: Set[int] = set()
        for fd, ev in fds:
            if ev & EVENT_READ:
                want_r.add(fd)
            if ev & EVENT_WRITE:
                want_w.add(fd)
        loop = self.loop
        frames_fd = self.op._callout.stdout_fd
        for fd in self.readers - want_r:
            loop.remove_reader(fd)
        for fd in want_r - self.readers:
            if fd == frames_fd:
                loop.add_reader(fd, self.on_frames)
            else:
                loop.add_reader(fd, self.on_ready, fd, EVENT_READ)
        for fd in self.writers - want_w:
            loop.remove_writer(fd)
        for fd in want_w - self.writers:
            loop.add_writer(fd, self.on_ready, fd, EVENT_WRITE)
        self.readers = want_r
        self.writers = want_w

    def on_ready(self, fd: int, events: int) -> None:
        try:
            self.op.handle(fd, events)
        except BaseException as exc:  # a callback's KeyboardInterrupt, a bug
            self.crash(exc)
            return
        self.sync()

    def on_frames(self) -> None:
        """The frame pipe is readable: on_ready's hot path.  fds() and
        next_deadline() are looked at again only if the frames changed
        what the callout watches or the operation is stopping; a deadline
        that only moved later (idle, frame) is left to the timer: early,
        handle_timeout() does nothing and sync() sets the new one."""
        op = self.op
        try:
            op._read_frames()
        except BaseException as exc:  # a callback's KeyboardInterrupt, a bug
            self.crash(exc)
            return
        if op._error is not None or op._callout.watch != self.watch:
            self.sync()

    def on_timer(self) -> None:
        self.timer = None
        self.timer_at = None
        try:
            self.op.handle_timeout()
        except BaseException as exc:
            self.crash(exc)
            return
        self.sync()

    def crash(self, exc: BaseException) -> None:
        """Something raised out of the operation: end it, report exc."""
        self.op.close()
        self.close()
        if not self.done.done():
            self.done.set_exception(exc)

    def run_awaitable(self, awaitable: Any, name: Optional[str]) -> "asyncio.Task[Any]":
        task = asyncio.ensure_future(self._await(awaitable, name), loop=self.loop)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _await(self, awaitable: Any, name: Optional[str]) -> None:
        try:
            value = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.op.reply_error(exc, name or "progress")
        else:
            if name is not None:
                # Still the request this task answers?  (Not if the
                # operation was aborted and answered "failed" meanwhile.)
                if self.op.pending_request == name:
                    try:
                        self.op.reply(value)
                    except (TypeError, ValueError) as exc:
                        # A value the request cannot take: the operation
                        # fails (CallbackError), not this task.
                        self.op.reply_error(exc, name)
        self.sync()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in self.readers:
            self.loop.remove_reader(fd)
        for fd in self.writers:
            self.loop.remove_writer(fd)
        self.readers = set()
        self.writers = set()
        self.last_fds = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in list(self.tasks):
            task.cancel()
        self.op._set_runner(None)
        self.op.set_listener(None)


async def run(op: Operation) -> OperationResult:
    """Run an operation (started here if it was not) on the running loop."""
    loop = asyncio.get_running_loop()
    if not op.done() and op.pid is None:
        op.start()
    done: "asyncio.Future[None]" = loop.create_future()
    driver = _Driver(loop, op, done)
    driver.sync()
    try:
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            if done.done():     # finished as the cancellation came
                raise
            # Abort, and wait for the helper to be gone before raising.
            op.abort()
            driver.sync()
            while not done.done():
                try:
                    await asyncio.shield(done)
                except asyncio.CancelledError:
                    op.kill()
                    driver.sync()
            raise
    finally:
        driver.close()
        if not op.done():
            op.close()
    return op.result()


async def save_domain(domid: int, fd: FileDescriptor, callbacks: Optional[object] = None,
                      **options: Unpack[SaveOptions]) -> SaveResult:
    """Save domain ``domid`` to ``fd``: :func:`xensr.save_domain` on asyncio."""
    _options("save_domain", options, SaveOptions)
    op = SaveOperation(domid, fd, callbacks, **options)
    result = await run(op)
    assert isinstance(result, SaveResult)
    return result


async def restore_domain(domid: int, fd: FileDescriptor, callbacks: Optional[object] = None,
                         *, store_evtchn: int, console_evtchn: int,
                         **options: Unpack[RestoreOptions]) -> RestoreResult:
    """Restore into ``domid`` from ``fd``: :func:`xensr.restore_domain` on asyncio."""
    _options("restore_domain", options, RestoreOptions)
    op = RestoreOperation(domid, fd, callbacks, store_evtchn=store_evtchn,
                          console_evtchn=console_evtchn, **options)
    result = await run(op)
    assert isinstance(result, RestoreResult)
    return result
