"""Fuzz target: the callout's frame decoder behind a real operation.

Each input is turned into: a direction (save or restore), a set of
toolstack callbacks (whose answers are drawn from the input too, including
DEFERRED, exceptions, wrong types and out-of-range ints), the log levels
the operation decodes, then helper stdout bytes cut into chunks of
input-chosen sizes.  The chunks go through ``Callout.feed`` with the
operation's own message handler, as ``Operation.handle`` would pass them
from the pipe; between chunks a deferred request may be answered with
``Operation.reply``.  At the end the helper is taken as exited and the
operation finishes as it would after reaping it.

The operation never spawns a helper: it is put in its running state by
hand, so its pid stays -1 and no signal can reach any process.

What may happen: ``feed`` raises a ``ProtocolError`` subclass (handed to
the operation's failure path, as ``handle`` does); ``reply`` raises
``ValueError``/``TypeError``/``RuntimeError`` for a value or state the
documentation says it refuses.  Anything else escaping, or the finished
operation not having exactly one of a result and an error, is a finding.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from typing import Any, Callable

import atheris

from fuzz.targets import run

with atheris.instrument_imports(include=["xensr"]):
    import xensr
    from xensr import _constants as C
    from xensr import api
    from xensr.errors import ProtocolError, XensrError

# Answers a callback may give, picked by the input: valid ones, the
# documented special ones, and what a careless toolstack returns.
ANSWERS = (True, False, 0, 1, -1, None, 2, 1 << 31, 1 << 40, -(1 << 63), "1",
           1.5, xensr.DEFERRED, RuntimeError("callback failed"))

# Values a deferred request may be answered with.
REPLIES = (True, False, 0, 1, None, -1, 1 << 40, "yes")

_NULL_FD = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


class _Formatting(logging.Handler):
    """Formats every record (as a real handler would) and prints nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


for _name in ("xensr", "xensr.helper"):
    _logger = logging.getLogger(_name)
    _logger.addHandler(_Formatting())
    _logger.setLevel(logging.DEBUG)
    _logger.propagate = False


#: Bytes before the helper's stdout in an input (see _Control).
CONTROL = 8


class _Control:
    """The input's first CONTROL bytes: how the operation is set up and how
    its stdout is cut; the rest of the input is the stdout itself, so that
    a seed is a control prefix and a real helper's frames."""

    def __init__(self, head: bytes):
        head = head.ljust(CONTROL, b"\0")
        self.restore = bool(head[0] & 1)
        self.eof = not head[0] & 2
        # Four bits per callback: 0 none, else an ANSWERS index.
        self.picks = int.from_bytes(head[1:4], "little")
        self.log_levels = head[4]
        self.max_chunk = 1 << (head[5] & 15)
        self.rng = random.Random(int.from_bytes(head[6:8], "little"))


class Callbacks:
    """Toolstack callbacks whose answers come from the fuzzer's input."""

    def __init__(self, picks: int, names: tuple[str, ...]):
        for i, name in enumerate(names):
            pick = (picks >> (4 * i)) & 15
            if pick:
                setattr(self, name, self._make(name, ANSWERS[(pick - 1) % len(ANSWERS)]))

    @staticmethod
    def _make(name: str, answer: Any) -> Callable[..., Any]:
        def callback(*args: Any) -> Any:
            if isinstance(answer, BaseException):
                raise answer
            return answer
        callback.__name__ = name
        return callback


def _operation(ctl: _Control) -> api.Operation:
    names = C.CALLBACKS_RESTORE if ctl.restore else C.CALLBACKS_SAVE
    callbacks = Callbacks(ctl.picks, names) if ctl.picks else None
    op: api.Operation
    if ctl.restore:
        op = api.RestoreOperation(1, _NULL_FD, callbacks, store_evtchn=1, console_evtchn=2)
    else:
        op = api.SaveOperation(1, _NULL_FD, callbacks)
    # As start() leaves it, without a helper (pid -1: signals go nowhere).
    op._state = "running"
    op._callout.log_levels = ctl.log_levels
    return op


def _feed(op: api.Operation, ctl: _Control, stdout: bytes) -> None:
    # (co.reading is False without a helper's pipe; feed() itself stops
    # reading after complete or an error.)
    co = op._callout
    pos = 0
    while pos < len(stdout) and op._error is None:
        size = ctl.rng.randint(1, ctl.max_chunk)
        try:
            co.feed(op._messages, stdout[pos:pos + size])
        except ProtocolError as exc:
            op._fail(exc)
            return
        pos += size
        if op._pending is not None and ctl.rng.random() < 0.5:
            try:
                op.reply(ctl.rng.choice(REPLIES))
            except (ValueError, TypeError, RuntimeError):
                pass
    if op._error is None and ctl.eof:
        try:
            co.feed(op._messages, b"", eof=True)
        except ProtocolError as exc:
            op._fail(exc)


def _finish(op: api.Operation) -> None:
    """As if the helper had been reaped: the operation must end with
    exactly one of a result and an error, and its log tail must read."""
    op._exited()
    assert op.done
    err = op.exception()
    if err is None:
        op.result()
    else:
        assert isinstance(err, XensrError), repr(err)
    for line in op.log_tail:
        assert isinstance(line, str)


def test_one_input(data: bytes) -> None:
    ctl = _Control(data[:CONTROL])
    op = _operation(ctl)
    try:
        _feed(op, ctl, data[CONTROL:])
        _finish(op)
    finally:
        op._callout.close()


def main(argv: list[str] | None = None) -> None:
    run(test_one_input, argv)


if __name__ == "__main__":
    main()
