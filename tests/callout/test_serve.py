"""The callout's blocking loop (Callout.serve, used by Operation.run), its
direct callbacks, log frames kept raw and formatted lazily, and progress
frames nobody wants."""

from __future__ import annotations

import errno
import gc
import logging
import os
import select
import sys
import time

import pytest

import xensr
from xensr import _constants as C
from xensr import _xc
from xensr.callbacks import DEFERRED, PrecopyStats
from xensr.errors import CallbackError, UnterminatedStringError, ShortFrameError
from tests.support import fakehelper as fh
from tests.support.fakehelper import Script

SAVE_FLAGS = C.CBFLAG_SUSPEND | C.CBFLAG_SWITCH_QEMU_LOGDIRTY | C.CBFLAG_PRECOPY_POLICY


class Policy:
    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = []
        self.progress_calls = []

    def precopy_policy(self, stats):
        self.seen.append(stats)
        return self.answers.pop(0)

    def suspend(self):
        return True

    def switch_qemu_logdirty(self, domid, enable):
        self.seen.append(("logdirty", domid, enable))
        return None

    def progress(self, *args):
        self.progress_calls.append(args)


def test_run_serves_split_and_coalesced_frames(fake, iofd):
    """Operation.run's C loop: a request split across two writes (the
    helper waits until the first half was read), several requests' frames
    and log/progress frames coalesced in one write, replies in order."""
    req = fh.precopy(1, 100, 5)
    burst = (fh.log(C.XTL_INFO, 0, b"c", b"a" * 50) + fh.progress(b"c", b"p", 1, 2)
             + fh.precopy(2, 200, 3))
    script = (Script()
              .write(req[:5]).sync().write(req[5:]).reply()
              .write(burst).reply()
              .write(fh.logdirty(3, 1)).reply()
              .write(fh.SUSPEND).reply()
              .write(fh.precopy(3, 300, 0) + fh.complete(0, 0)).reply().reply())
    cb = Policy([C.XGS_POLICY_CONTINUE_PRECOPY, C.XGS_POLICY_CONTINUE_PRECOPY,
                 C.XGS_POLICY_STOP_AND_COPY])
    res = xensr.save_domain(3, iofd, cb, live=True, helper=fake.path, env=fake.env(script))
    assert fake.report().replies == [0, 0, 0, 1, 1, 0]
    assert cb.seen == [PrecopyStats(1, 100, 5), PrecopyStats(2, 200, 3),
                       ("logdirty", 3, True), PrecopyStats(3, 300, 0)]
    assert [type(s) for s in cb.seen] == [PrecopyStats, PrecopyStats, tuple, PrecopyStats]
    assert cb.progress_calls == [("c", "p", 1, 2)]
    assert res.callbacks == {"precopy_policy": 3, "switch_qemu_logdirty": 1, "suspend": 1}
    assert res.precopy_iterations == 3
    assert res.frames == 8 and res.log_lines == 1


def test_run_with_unusual_returns_goes_through_the_python_layer(fake, iofd):
    """Returns the callout does not map itself: an IntEnum, DEFERRED
    answered from a progress callback, a wrong type (CallbackError)."""
    op_box = []

    class CB:
        def precopy_policy(self, stats):
            if stats.iteration == 1:
                return xensr.PrecopyDecision.CONTINUE_PRECOPY
            return DEFERRED

        def progress(self, *args):
            op = op_box[0]
            if op.pending_request == "precopy_policy":
                op.reply(C.XGS_POLICY_STOP_AND_COPY)

    script = (Script().write(fh.precopy(1, 1, 1)).reply()
              .write(fh.precopy(2, 1, 1)).write(fh.progress(b"c", b"p", 0, 1)).reply()
              .save_ok())
    op = xensr.SaveOperation(3, iofd, CB(), live=True, helper=fake.path,
                             env=fake.env(script))
    op_box.append(op)
    op.run()
    assert fake.report().replies == [0, 1, 0]

    class Bad:
        def suspend(self):
            return "yes"

    script = Script().write(fh.SUSPEND).reply().save_ok()
    with pytest.raises(CallbackError) as info:
        xensr.save_domain(3, iofd, Bad(), helper=fake.path, env=fake.env(script))
    assert isinstance(info.value.__cause__, TypeError)


def test_direct_callback_exception_fails_the_operation(fake, iofd):
    class Boom:
        def switch_qemu_logdirty(self, domid, enable):
            raise RuntimeError("qemu is gone")

    script = Script().write(fh.logdirty(3, 1)).reply().save_ok()
    with pytest.raises(CallbackError) as info:
        xensr.save_domain(3, iofd, Boom(), helper=fake.path, env=fake.env(script))
    assert info.value.callback == "switch_qemu_logdirty"
    assert str(info.value.__cause__) == "qemu is gone"


class Handler:
    def __init__(self):
        self.calls = []
        self.results = []
        self.failures = []

    def msg_log(self, *args):
        self.calls.append(("log", args))

    def msg_progress(self, *args):
        self.calls.append(("progress", args))

    def msg_suspend(self):
        self.calls.append(("suspend", ()))
        return 1

    def msg_switch_qemu_logdirty(self, domid, enable):
        self.calls.append(("logdirty", (domid, enable)))
        return 0

    def msg_precopy_policy(self, *args):
        self.calls.append(("precopy", args))
        return 0

    def msg_complete(self, retval, errnoval):
        return 0

    def direct_result(self, msgtype, value):
        self.results.append((msgtype, value))
        return 42

    def direct_failed(self, msgtype, exc):
        self.failures.append((msgtype, exc))
        return None


@pytest.mark.parametrize("msgtype,frame,value,reply", [
    (3, fh.SUSPEND, True, 1),
    (3, fh.SUSPEND, False, 0),
    (3, fh.SUSPEND, 2, 2),
    (7, fh.logdirty(1, 1), None, 0),
    (7, fh.logdirty(1, 1), True, 0),
    (7, fh.logdirty(1, 1), False, -1),
    (7, fh.logdirty(1, 1), -5, -5),
    (11, fh.precopy(1, 2, 3), 1, 1),
    (11, fh.precopy(1, 2, 3), -1, -1),
])
def test_direct_callback_common_returns_are_mapped_in_the_callout(
        fake, iofd, msgtype, frame, value, reply):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    h = Handler()
    got = []
    co.set_direct(msgtype, lambda *a: got.append(a) or value, PrecopyStats)
    env = [os.fsencode(k) + b"=" + os.fsencode(v)
           for k, v in fake.env(Script().write(frame).reply().save_ok()).items()]
    co.spawn(fake.path, "--save-domain", iofd, -1, [3, 0, SAVE_FLAGS, 0], env)
    try:
        while co.serve(h, time.monotonic() + 30) != 1:
            pass
        assert co.poll_exit() and co.returncode == 0
    finally:
        co.close()
    assert fake.report().replies == [reply, 0]
    assert h.calls == [] and h.results == [] and h.failures == []
    assert co.type_counts[msgtype] == 1
    if msgtype == 11:
        assert got == [(PrecopyStats(1, 2, 3),)] and type(got[0][0]) is PrecopyStats
    elif msgtype == 7:
        assert got == [(1, True)] and type(got[0][1]) is bool
    else:
        assert got == [()]


@pytest.mark.parametrize("msgtype,frame,value", [
    (3, fh.SUSPEND, "yes"),
    (3, fh.SUSPEND, None),
    (7, fh.logdirty(1, 0), 1 << 40),
    (11, fh.precopy(1, 2, 3), 2),
    (11, fh.precopy(1, 2, 3), True),
    (11, fh.precopy(1, 2, 3), xensr.PrecopyDecision.STOP_AND_COPY),
])
def test_direct_callback_other_returns_go_to_direct_result(msgtype, frame, value):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    h = Handler()
    co.set_direct(msgtype, lambda *a: value)
    co.feed(h, frame)
    assert h.results == [(msgtype, value)]
    assert h.calls == []


def test_direct_callback_exception_goes_to_direct_failed_and_clear_direct():
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    h = Handler()
    err = KeyError("x")

    def boom():
        raise err
    co.set_direct(3, boom)
    co.feed(h, fh.SUSPEND)
    assert h.failures == [(3, err)]
    assert co.awaiting == 3       # no reply: the handler decides
    co2 = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    co2.set_direct(3, boom)
    co2.clear_direct()
    co2.feed(h, fh.SUSPEND)
    assert h.calls == [("suspend", ())]
    with pytest.raises(ValueError):
        co2.set_direct(1, print)      # log cannot be direct
    with pytest.raises(ValueError):
        co2.set_direct(10, print)
    with pytest.raises(TypeError):
        co2.set_direct(3, 5)


class Stats(tuple):
    """A tuple subclass with a __dict__ (a NamedTuple has none)."""


@pytest.mark.parametrize("wrap", [PrecopyStats, Stats])
def test_direct_callback_struct_is_what_tuple_new_makes(wrap):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    got = []
    co.set_direct(11, got.append, wrap)
    co.feed(Handler(), fh.precopy(1, 2**40, -1) + fh.precopy(2, 3, 4))
    want = [tuple.__new__(wrap, (1, 2**40, -1)), tuple.__new__(wrap, (2, 3, 4))]
    assert got == want and [type(s) for s in got] == [wrap, wrap]
    assert gc.is_tracked(got[0]) == gc.is_tracked(want[0])
    if wrap is PrecopyStats:
        assert got[0].total_written == 2**40 and got[0].dirty_count == -1
    else:
        got[0].note = "kept"          # the instance dict works
        assert got[0].__dict__ == {"note": "kept"}
    # Held the same ways (a list, the loop variable): no reference leaked.
    assert [sys.getrefcount(s) for s in got] == [sys.getrefcount(s) for s in want]


def test_direct_callback_struct_of_plain_tuple_is_the_args():
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    got = []
    co.set_direct(11, got.append, tuple)
    co.feed(Handler(), fh.precopy(1, 2, 3))
    assert got == [(1, 2, 3)] and type(got[0]) is tuple


@pytest.mark.parametrize("wrap", [list, os.stat_result, "x", (1, 2, 3)])
def test_direct_callback_struct_must_be_a_class_derived_from_tuple(wrap):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    with pytest.raises(TypeError, match="derived from tuple"):
        co.set_direct(11, print, wrap)
    co.set_direct(3, print, wrap)     # not a struct message: wrap unused
    co.set_direct(11, None, wrap)     # removed: nothing to wrap


def test_log_frames_below_the_mask_are_kept_raw_and_formatted_lazily():
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS, log_tail=3)
    co.log_levels = 1 << C.XTL_ERROR
    h = Handler()
    stream = b"".join(fh.log(C.XTL_DEBUG, 0, b"xc", b"line %d" % i) for i in range(5))
    stream += fh.log(C.XTL_ERROR, errno.ENOENT, b"xc", b"bad")
    stream += fh.log(12, 0, b"xc", b"odd level")      # above 9: bit 10
    co.feed(h, stream)
    assert h.calls == [("log", (C.XTL_ERROR, errno.ENOENT, "xc", "bad"))]
    assert co.log_lines == 7 and co.frames == 7
    assert co.log_tail == ("debug: xc: line 4", "error: xc: bad: No such file or directory",
                           "level12: xc: odd level")
    co.log_levels |= 1 << 10
    co.feed(h, fh.log(12, 0, b"xc", b"odd again"))
    assert h.calls[-1] == ("log", (12, 0, "xc", "odd again"))
    # A long line in a slot that held a short one, then a short one again.
    co.feed(h, fh.log(C.XTL_DEBUG, 0, b"xc", b"y" * 5000) + fh.log(C.XTL_DEBUG, 0, b"c", b"z"))
    assert co.log_tail[-2] == "debug: xc: " + "y" * 5000
    assert co.log_tail[-1] == "debug: c: z"


@pytest.mark.parametrize("bad,err", [
    (fh.frame(fh.log(1, 0, b"c", b"t")[2:-1] + b"x"), UnterminatedStringError),
    (fh.frame(fh.log(1, 0, b"c", b"t")[2:] + b"\0"), xensr.ProtocolError),
    (fh.frame(b"\x01\x00" + b"\0" * 6), ShortFrameError),
])
def test_malformed_log_frames_fail_the_same_when_not_dispatched(bad, err):
    for levels in (0, 0xffffffff):
        co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
        co.log_levels = levels
        with pytest.raises(err) as info:
            co.feed(Handler(), bad)
        assert type(info.value) is type(pytest.raises(err, _raise_decoded, bad).value)
        assert co.log_lines == 0


def _raise_decoded(frame):
    _xc.decode_frame_body(frame[2:], _xc.DIR_SAVE)


@pytest.mark.parametrize("bad", [
    fh.frame(fh.progress(b"c", b"w", 1, 2)[2:-1]),
    fh.frame(fh.progress(b"c", b"w", 1, 2)[2:] + b"\0"),
    fh.frame(b"\x02\x00\x00\x00\x00\x00"),
])
def test_progress_frames_nobody_wants_are_checked_and_counted(bad):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    co.progress_wanted = False
    h = Handler()
    co.feed(h, fh.progress(b"c", b"w", 1, 2) * 3)
    assert h.calls == [] and co.frames == 3 and co.type_counts[2] == 3
    with pytest.raises(xensr.ProtocolError) as info:
        co.feed(h, bad)
    with pytest.raises(type(info.value)):
        _raise_decoded(bad)


def test_operation_logs_only_what_the_logger_keeps_and_keeps_the_tail(fake, iofd, caplog):
    caplog.set_level(logging.WARNING, logger="xensr.helper")
    script = Script()
    for i in range(30):
        script.write(fh.log(C.XTL_DEBUG, 0, b"xc", b"debug %d" % i))
    script.write(fh.log(C.XTL_ERROR, 0, b"xc", b"it broke")).write(fh.complete(-1, errno.EIO)).reply()
    with pytest.raises(xensr.SaveRestoreError) as info:
        xensr.save_domain(3, iofd, helper=fake.path, env=fake.env(script))
    recs = [r.getMessage() for r in caplog.records if r.name == "xensr.helper"]
    assert recs == ["[domain 3] xc: it broke"]
    tail = info.value.log_tail
    assert len(tail) == 20
    assert tail[-1] == "error: xc: it broke" and tail[0] == "debug: xc: debug 11"


def test_operation_logs_debug_lines_when_the_logger_wants_them(fake, iofd, caplog):
    caplog.set_level(logging.DEBUG, logger="xensr.helper")
    script = Script()
    for i in range(3):
        script.write(fh.log(C.XTL_DEBUG, 0, b"xc", b"debug %d" % i))
    script.save_ok()
    xensr.save_domain(3, iofd, helper=fake.path, env=fake.env(script))
    recs = [r.getMessage() for r in caplog.records if r.name == "xensr.helper"]
    assert recs == ["[domain 3] xc: debug %d" % i for i in range(3)]


def test_serve_returns_on_wake_at_until_and_on_exit(fake, iofd):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    env = [os.fsencode(k) + b"=" + os.fsencode(v)
           for k, v in fake.env(Script().write(fh.SUSPEND).reply().save_ok()).items()]
    co.spawn(fake.path, "--save-domain", iofd, -1, [3, 0, SAVE_FLAGS, 0], env)
    try:
        h = Handler()
        co.wake()
        assert co.serve(h, time.monotonic() + 30) == 2
        # Already past: returns at once.
        assert co.serve(h, time.monotonic() - 1) == 0
        t0 = time.monotonic()
        assert co.serve(h, t0 + 30, True) == 1       # the helper exited
        assert h.calls == [("suspend", ())]
        assert co.completed and co.last_read_at >= t0
        assert co.poll_exit() and co.returncode == 0
        assert co.serve(h, time.monotonic() + 30) == 3
    finally:
        co.close()
    assert fake.report().replies == [1, 0]


def test_serve_times_out_while_the_helper_hangs(fake, iofd):
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    env = [os.fsencode(k) + b"=" + os.fsencode(v)
           for k, v in fake.env(Script().hang()).items()]
    co.spawn(fake.path, "--save-domain", iofd, -1, [3, 0, SAVE_FLAGS, 0], env)
    try:
        assert co.serve(Handler(), time.monotonic() + 0.05) == 0
        assert not co.reaped
    finally:
        co.close()


# Reads ahead: after a reply written at once, the callout reads again
# without waiting for readiness (Callout.read_ahead per on_readable call).

def _rounds_script(n):
    s = Script()
    for i in range(n):
        s.request(fh.precopy(i, i * 4096, n - i))
    return s.request(fh.SUSPEND).save_ok()


def _run_polled(fake, iofd, read_ahead, n):
    """Drive a helper of n precopy requests with on_readable and poll();
    return the handler, the frames each call handled and the replies."""
    co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
    assert co.read_ahead == 8
    if read_ahead is not None:
        co.read_ahead = read_ahead
    h = Handler()
    env = [os.fsencode(k) + b"=" + os.fsencode(v)
           for k, v in fake.env(_rounds_script(n)).items()]
    co.spawn(fake.path, "--save-domain", iofd, -1, [3, 0, SAVE_FLAGS, 0], env)
    per_call = []
    try:
        p = select.poll()
        p.register(co.stdout_fd, select.POLLIN)
        while co.reading:
            p.poll(30000)
            before = co.frames
            co.on_readable(h)
            per_call.append(co.frames - before)
        while not co.poll_exit():
            time.sleep(0.001)
        assert co.returncode == 0 and co.completed
    finally:
        co.close()
    return h, per_call, fake.report().replies


@pytest.mark.parametrize("read_ahead", [None, 0, 1, 3])
def test_reads_ahead_dispatch_and_reply_as_without(fake, iofd, read_ahead):
    n = 40
    h, per_call, replies = _run_polled(fake, iofd, read_ahead, n)
    assert h.calls == ([("precopy", (i, i * 4096, n - i)) for i in range(n)]
                       + [("suspend", ())])
    assert replies == [0] * n + [1, 0]
    assert sum(per_call) == n + 2
    # Each request waits for its reply, so one read brings one request:
    # a call handles at most one plus the reads ahead it may make.
    limit = 1 + (8 if read_ahead is None else read_ahead)
    assert max(per_call) <= limit, per_call


def test_serve_without_reads_ahead_answers_the_same(fake, iofd):
    replies = []
    for read_ahead in (0, 8):
        co = _xc.Callout(_xc.DIR_SAVE, SAVE_FLAGS)
        co.read_ahead = read_ahead
        h = Handler()
        env = [os.fsencode(k) + b"=" + os.fsencode(v)
               for k, v in fake.env(_rounds_script(25)).items()]
        co.spawn(fake.path, "--save-domain", iofd, -1, [3, 0, SAVE_FLAGS, 0], env)
        try:
            while co.serve(h, time.monotonic() + 30) != 1:
                pass
            assert co.poll_exit() and co.returncode == 0
        finally:
            co.close()
        assert len(h.calls) == 26 and co.precopy_rounds == 25
        replies.append(fake.report().replies)
    assert replies[0] == replies[1] == [0] * 25 + [1, 0]
