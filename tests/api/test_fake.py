"""The Operation against the fake helper: reply values, callback errors,
exit interpretation (docs/protocol.md §8.3), timeouts, abort, logging, dropped objects."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import threading
import warnings

import pytest

import xensr
from xensr import _constants as C
from xensr import _xc
from xensr.errors import (Aborted, CallbackError, HelperExitError, HelperTimeout,
                          SaveRestoreError)
from tests.support import fakehelper as fh
from tests.support.fakehelper import Script


def save_op(fake, script, fd, callbacks=None, **kw):
    return xensr.SaveOperation(4, fd, callbacks, helper=fake.path, env=fake.env(script), **kw)


def restore_op(fake, script, fd, callbacks=None, **kw):
    return xensr.RestoreOperation(4, fd, callbacks, helper=fake.path, env=fake.env(script),
                                  store_evtchn=1, console_evtchn=2, **kw)


def finish(op):
    try:
        op.run()
    except xensr.XensrError:
        pass
    return op


# ----------------------------------------------------------------------
# Reply values (docs/protocol.md §6.2)

class Returns:
    def __init__(self, **values):
        for name, value in values.items():
            setattr(self, name, (lambda v: lambda *a: v)(value))


@pytest.mark.parametrize("value,reply", [(True, 1), (False, 0), (1, 1), (0, 0)])
def test_suspend_reply(fake, iofd, value, reply):
    op = save_op(fake, Script().request(fh.SUSPEND).save_ok(), iofd, Returns(suspend=value))
    assert op.run().callbacks == {"suspend": 1}
    assert fake.report().replies == [reply, 0]


@pytest.mark.parametrize("value,reply", [(None, 0), (True, 0), (False, -1), (-5, -5)])
def test_switch_qemu_logdirty_reply(fake, iofd, value, reply):
    seen = []

    class CB:
        def switch_qemu_logdirty(self, domid, enable):
            seen.append((domid, enable))
            return value
    script = Script().request(fh.logdirty(4, 1)).request(fh.logdirty(4, 0)).save_ok()
    save_op(fake, script, iofd, CB()).run()
    assert seen == [(4, True), (4, False)]
    assert fake.report().replies == [reply, reply, 0]


def test_defaults_when_callbacks_lack_methods(fake, iofd):
    script = Script().request(fh.SUSPEND).request(fh.logdirty(4, 1)).save_ok()
    op = save_op(fake, script, iofd, None)
    assert op.cbflags == C.CBFLAG_SUSPEND | C.CBFLAG_SWITCH_QEMU_LOGDIRTY
    op.run()
    assert fake.report().replies == [1, 0, 0]
    script = Script().request(fh.static_data_done(1)).write(fh.restore_results(3, 4)).save_ok()
    op = restore_op(fake, script, iofd, None)
    assert op.cbflags == 768
    res = op.run()
    assert fake.report().replies == [0, 0]
    assert (res.store_gfn, res.console_gfn) == (3, 4)


@pytest.mark.parametrize("value,reply", [
    (xensr.PrecopyDecision.STOP_AND_COPY, 1), (C.XGS_POLICY_CONTINUE_PRECOPY, 0),
    (xensr.XGS_POLICY_ABORT, -1)])
def test_precopy_policy_reply(fake, iofd, value, reply):
    got = []

    class CB:
        def precopy_policy(self, stats):
            got.append(stats)
            return value
    op = save_op(fake, Script().request(fh.precopy(2, 4096, 17)).save_ok(), iofd, CB(),
                 live=True)
    assert op.cbflags & C.CBFLAG_PRECOPY_POLICY
    res = op.run()
    assert got == [xensr.PrecopyStats(2, 4096, 17)]
    assert got[0].iteration == 2 and got[0].dirty_count == 17
    assert res.precopy_iterations == 1
    assert fake.report().replies == [reply, 0]


@pytest.mark.parametrize("value,reply", [(None, 0), (True, 0), (False, -1)])
def test_static_data_done_reply(fake, iofd, value, reply):
    got = []

    class CB:
        def static_data_done(self, missing):
            got.append(missing)
            return value
    script = Script().request(fh.static_data_done(3)).write(fh.restore_results(1, 2)).save_ok()
    restore_op(fake, script, iofd, CB()).run()
    assert got == [3]
    assert fake.report().replies == [reply, 0]


def test_restore_checkpoint_reply(fake, iofd):
    answers = iter([xensr.CheckpointResult.SUCCESS, True, xensr.XGR_CHECKPOINT_FAILOVER])

    class CB:
        def checkpoint(self):
            return next(answers)
    script = Script()
    for _ in range(3):
        script.request(fh.CHECKPOINT)
    script.write(fh.restore_results(1, 2)).save_ok()
    restore_op(fake, script, iofd, CB(), stream_type=xensr.XC_STREAM_REMUS).run()
    assert fake.report().replies == [1, 1, 2, 0]


@pytest.mark.parametrize("name,frame,value", [
    ("suspend", fh.SUSPEND, None),
    ("suspend", fh.SUSPEND, "yes"),
    ("suspend", fh.SUSPEND, 1 << 40),
    ("switch_qemu_logdirty", fh.logdirty(1, 1), "ok"),
    ("switch_qemu_logdirty", fh.logdirty(1, 1), -(1 << 31) - 1),
    ("precopy_policy", fh.precopy(1, 1, 1), True),
    ("precopy_policy", fh.precopy(1, 1, 1), 7),
])
def test_bad_return_value_is_a_callback_error(fake, iofd, counts, name, frame, value):
    """The request gets its failure reply, so that libxenguest unwinds; the
    helper finishes on its own (no SIGKILL)."""
    script = Script().ignore_term().request(frame).write(fh.complete(-1, errno.EINVAL)).exit(0)
    op = save_op(fake, script, iofd, Returns(**{name: value}), kill_grace=60)
    with pytest.raises(CallbackError) as info:
        op.run()
    assert info.value.callback == name
    assert isinstance(info.value.__cause__, (TypeError, ValueError))
    assert op.returncode == 0
    assert fake.report().replies == [C.FAILURE_REPLY[name]]


def test_raising_callback_answers_failure_and_lets_the_helper_unwind(fake, iofd, counts):
    boom = RuntimeError("the guest would not suspend")

    class CB:
        def suspend(self):
            raise boom
    script = Script().ignore_term().write(fh.log(1, 0, b"libxl-save-helper", b"starting save"))
    script.request(fh.SUSPEND).write(fh.complete(-1, errno.EINVAL)).exit(0)
    op = save_op(fake, script, iofd, CB(), kill_grace=60)
    with pytest.raises(CallbackError) as info:
        op.run()
    assert info.value.__cause__ is boom
    assert info.value.callback == "suspend"
    assert "the guest would not suspend" in str(info.value)
    assert op.returncode == 0
    assert fake.report().replies == [0]
    assert info.value.log_tail == ("debug: libxl-save-helper: starting save",)


def test_raising_callback_sigkills_only_after_the_grace(fake, iofd, counts):
    """A helper that neither unwinds nor exits is killed after kill_grace."""
    class CB:
        def suspend(self):
            raise RuntimeError("no")
    script = Script().ignore_term().request(fh.SUSPEND).hang()
    op = save_op(fake, script, iofd, CB(), kill_grace=0.2)
    with pytest.raises(CallbackError):
        op.run()
    assert op.returncode == fh.SIGKILLED
    assert fake.report().replies == [0]


def test_raising_progress_callback(fake, iofd):
    class CB:
        def progress(self, *args):
            raise ValueError("bad progress")
    op = save_op(fake, Script().write(fh.progress(b"xc", b"Frames", 1, 2)).save_ok(), iofd, CB())
    with pytest.raises(CallbackError) as info:
        op.run()
    assert info.value.callback == "progress"
    assert isinstance(info.value.__cause__, ValueError)


def test_coroutine_callback_without_aio_is_a_callback_error(fake, iofd):
    class CB:
        async def suspend(self):
            return True
    op = save_op(fake, Script().request(fh.SUSPEND).save_ok(), iofd, CB())
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "never awaited"
        with pytest.raises(CallbackError, match="xensr.aio"):
            op.run()


def test_checkpointed_streams_need_their_callbacks(iofd):
    with pytest.raises(ValueError, match="checkpoint, postcopy"):
        xensr.SaveOperation(1, iofd, stream_type=xensr.XC_STREAM_REMUS)
    with pytest.raises(ValueError, match="wait_checkpoint"):
        xensr.SaveOperation(1, iofd, Returns(checkpoint=1, postcopy=1),
                            stream_type=xensr.XC_STREAM_COLO)
    with pytest.raises(ValueError, match="checkpoint"):
        xensr.RestoreOperation(1, iofd, store_evtchn=1, console_evtchn=2,
                               stream_type=xensr.XC_STREAM_REMUS)


@pytest.mark.parametrize("kw,exc", [
    (dict(domid=-1), ValueError), (dict(domid=1 << 32), ValueError),
    (dict(domid="1"), TypeError), (dict(stream_type=3), ValueError),
    (dict(timeout=0), ValueError), (dict(idle_timeout=-1), ValueError),
    (dict(fd=True), TypeError), (dict(fd=-3), ValueError),
])
def test_bad_arguments(iofd, kw, exc):
    args = dict(domid=1, fd=iofd)
    args.update(kw)
    with pytest.raises(exc):
        xensr.SaveOperation(args.pop("domid"), args.pop("fd"), **args)


def test_bad_restore_arguments(iofd):
    with pytest.raises(ValueError):
        xensr.RestoreOperation(1, iofd, store_evtchn=1, console_evtchn=2, store_domid=65536)
    with pytest.raises(TypeError):
        xensr.RestoreOperation(1, iofd, store_evtchn=1)  # console_evtchn missing


# ----------------------------------------------------------------------
# Exit interpretation (docs/protocol.md §8.3)

def test_success_result(fake, iofd, counts):
    script = Script().write(fh.log(1, 0, b"libxl-save-helper", b"starting save"))
    script.request(fh.SUSPEND).save_ok()
    op = save_op(fake, script, iofd)
    res = op.run()
    assert isinstance(res, xensr.SaveResult)
    assert (res.retval, res.errno, res.returncode, res.domid) == (0, 0, 0, 4)
    assert res.pid == op.pid and res.frames == 3 and res.log_lines == 1
    assert res.callbacks == {"suspend": 1} and res.elapsed > 0
    assert res.helper == str(fake.path)


def test_exit_status(fake, iofd, counts):
    script = Script().write(fh.log(C.XTL_ERROR, errno.ENOENT, b"xencall", b"no handle"))
    script.exit(255)
    op = finish(save_op(fake, script, iofd))
    e = op.exception()
    assert isinstance(e, HelperExitError)
    assert (e.status, e.signal, e.reason, e.pid) == (255, None, "status", op.pid)
    assert f"domain 4 save helper [{op.pid}] exited with error status 255" in str(e)
    assert e.log_tail == ("error: xencall: no handle: No such file or directory",)


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT])
def test_fatal_signal(fake, iofd, sig):
    op = finish(save_op(fake, Script().request(fh.SUSPEND).die(sig), iofd))
    e = op.exception()
    assert isinstance(e, HelperExitError)
    assert e.signal == sig and e.status is None and e.reason == "signal"
    assert e.signal_name == signal.Signals(sig).name
    assert f"died due to fatal signal {signal.Signals(sig).name}" in str(e)


def test_exit_without_complete(fake, iofd):
    op = finish(save_op(fake, Script().request(fh.SUSPEND).exit(0), iofd))
    e = op.exception()
    assert isinstance(e, HelperExitError) and e.reason == "no-completion"
    assert "exited without signalling completion" in str(e)
    assert (e.status, e.signal) == (0, None)


def test_stdout_closed_early(fake, iofd):
    op = finish(save_op(fake, Script().close_stdout().sleep(50).exit(0), iofd))
    assert op.exception().reason == "no-completion"


def test_restore_exit_without_results(fake, iofd):
    op = finish(restore_op(fake, Script().save_ok(), iofd))
    e = op.exception()
    assert isinstance(e, HelperExitError) and e.reason == "no-results"
    assert "exited without providing results" in str(e)


def test_status_beats_missing_results(fake, iofd):
    op = finish(restore_op(fake, Script().exit(254), iofd))
    assert op.exception().status == 254


def test_complete_with_failure_is_a_save_restore_error(fake, iofd):
    script = Script().write(fh.log(C.XTL_ERROR, 0xFFFFFFFF, b"xc", b"Save failed"))
    script.request(fh.complete(-1, errno.EIO))
    op = finish(save_op(fake, script, iofd))
    e = op.exception()
    assert isinstance(e, SaveRestoreError)
    assert (e.retval, e.errno, e.errno_name) == (-1, errno.EIO, "EIO")
    assert e.log_tail == ("error: xc: Save failed",)
    assert op.returncode == 0


def test_result_before_done(fake, iofd):
    op = save_op(fake, Script().save_ok(), iofd)
    with pytest.raises(RuntimeError):
        op.result()
    op.start()
    with pytest.raises(RuntimeError):
        op.start()
    op.run()


# ----------------------------------------------------------------------
# Timeouts, abort, kill

def test_idle_timeout_on_a_hang(fake, iofd, counts):
    op = save_op(fake, Script().write(fh.log(1, 0, b"c", b"before the hang")).hang(),
                 iofd, idle_timeout=0.2)
    with pytest.raises(HelperTimeout) as info:
        op.run()
    assert info.value.kind == "idle" and info.value.seconds == 0.2
    assert op.returncode == fh.SIGTERMED         # SIGTERM was enough
    assert info.value.log_tail == ("debug: c: before the hang",)


def test_sigterm_ignored_then_sigkill_after_grace(fake, iofd, counts):
    op = save_op(fake, Script().ignore_term().hang(), iofd, idle_timeout=0.1, kill_grace=0.2)
    with pytest.raises(HelperTimeout):
        op.run()
    assert op.returncode == fh.SIGKILLED


def test_overall_timeout_while_the_helper_keeps_talking(fake, iofd):
    script = Script()
    for i in range(200):
        script.write(fh.progress(b"xc", b"Frames", i, 200)).sleep(20)
    op = save_op(fake, script, iofd, timeout=0.3, idle_timeout=10)
    with pytest.raises(HelperTimeout) as info:
        op.run()
    assert info.value.kind == "timeout"


def test_idle_clock_stops_while_a_deferred_reply_is_pending(fake, iofd):
    """The helper is silent because it waits for us: not idle."""
    class CB:
        def suspend(self):
            return xensr.DEFERRED
    op = save_op(fake, Script().request(fh.SUSPEND).save_ok(), iofd, CB(), idle_timeout=0.5)
    op.start()
    while op.pending_request is None:
        drive_once(op)
    assert op.pending_request == "suspend"
    assert op.next_deadline() is None
    op.handle_timeout(now=op._last_frame + 1000)     # long past the idle timeout
    assert not op.done()
    op.reply(True)
    assert op.next_deadline() is not None
    res = op.run()
    assert fake.report().replies == [1, 0]
    assert res.callbacks == {"suspend": 1}


def drive_once(op, timeout=1.0):
    import select
    p = select.poll()
    for fd, ev in op.fds():
        p.register(fd, (select.POLLIN if ev & xensr.EVENT_READ else 0)
                   | (select.POLLOUT if ev & xensr.EVENT_WRITE else 0))
    for fd, ev in p.poll(timeout * 1000):
        op.handle(fd, xensr.EVENT_READ | xensr.EVENT_WRITE)


def test_reply_without_pending_request(fake, iofd):
    op = save_op(fake, Script().save_ok(), iofd)
    op.start()
    with pytest.raises(RuntimeError):
        op.reply(True)
    op.run()


def test_abort_from_another_thread(fake, iofd, counts):
    op = save_op(fake, Script().write(fh.log(1, 0, b"c", b"x")).hang(), iofd)
    timer = threading.Timer(0.2, op.abort)
    timer.start()
    with pytest.raises(Aborted):
        op.run()
    timer.join()
    assert op.returncode == fh.SIGTERMED


def test_abort_answers_a_pending_request_with_failure(fake, iofd, counts):
    """Aborting while the helper waits for a deferred suspend: the helper
    gets "failed" (0) at once, unwinds, and completes."""
    class CB:
        def suspend(self):
            return xensr.DEFERRED
    script = Script().ignore_term().request(fh.SUSPEND).request(fh.complete(-1, errno.EINVAL))
    op = save_op(fake, script, iofd, CB())
    op.start()
    while op.pending_request is None:
        drive_once(op)
    op.abort()
    assert op.pending_request is None
    with pytest.raises(Aborted):
        op.run()
    assert fake.report().replies == [0, 0]
    assert op.returncode == 0


def test_requests_after_abort_get_failure_without_the_callback(fake, iofd):
    called = []

    class CB:
        def suspend(self):
            called.append("suspend")
            return True

        def switch_qemu_logdirty(self, domid, enable):
            called.append(("logdirty", enable))
    script = (Script().catch_term().write(fh.log(1, 0, b"c", b"x")).wait_term()
              .request(fh.SUSPEND).request(fh.logdirty(4, 0)).request(fh.complete(-1, 4)))
    op = save_op(fake, script, iofd, CB())
    op.start()
    while op._callout.frames == 0:
        drive_once(op)
    op.abort()
    with pytest.raises(Aborted):
        op.run()
    # suspend is not asked any more; turning log-dirty off (an undo) is.
    assert called == [("logdirty", False)]
    assert fake.report().replies == [0, 0, 0]


def test_kill(fake, iofd, counts):
    op = save_op(fake, Script().ignore_term().hang(), iofd)
    op.start()
    op.kill()
    with pytest.raises(Aborted):
        op.run()
    assert op.returncode == fh.SIGKILLED


def test_abort_before_start(fake, iofd, counts):
    op = save_op(fake, Script().save_ok(), iofd)
    op.abort()
    assert op.done()
    with pytest.raises(Aborted):
        op.result()


def test_close_while_running(fake, iofd, counts):
    with save_op(fake, Script().hang(), iofd) as op:
        op.start()
        pid = op.pid
    assert op.done()
    assert isinstance(op.exception(), Aborted)
    assert not os.path.exists(f"/proc/{pid}")


def test_dropped_operation_kills_and_reaps_its_helper(fake, iofd, counts):
    op = save_op(fake, Script().ignore_term().hang(), iofd)
    op.start()
    pid = op.pid
    with pytest.warns(ResourceWarning, match=f"helper \\[{pid}\\]"):
        del op
        gc.collect()
    assert not os.path.exists(f"/proc/{pid}")


def test_dropped_callout_restores_the_io_fd(fake, iofd):
    os.set_blocking(iofd, False)
    co = _xc.Callout(_xc.DIR_SAVE, 136)
    co.spawn(fake.path, "--save-domain", iofd, -1, [1, 0, 136, 0],
             [f"FAKEHELPER_SCRIPT={fake.workdir / 'none'}".encode()])
    assert os.get_blocking(iofd)
    with pytest.warns(ResourceWarning):
        del co
        gc.collect()
    assert not os.get_blocking(iofd)


# ----------------------------------------------------------------------
# Logging

@pytest.mark.parametrize("level,pylevel", [
    (C.XTL_DEBUG, logging.DEBUG), (C.XTL_VERBOSE, logging.DEBUG),
    (C.XTL_DETAIL, logging.DEBUG), (C.XTL_PROGRESS, logging.INFO),
    (C.XTL_INFO, logging.INFO), (C.XTL_NOTICE, logging.INFO),
    (C.XTL_WARN, logging.WARNING), (C.XTL_ERROR, logging.ERROR),
    (C.XTL_CRITICAL, logging.CRITICAL)])
def test_helper_log_levels(fake, iofd, caplog, level, pylevel):
    caplog.set_level(logging.DEBUG, logger="xensr.helper")
    script = Script().write(fh.log(level, errno.EIO, b"xc", b"some text")).save_ok()
    op = save_op(fake, script, iofd)
    op.run()
    recs = [r for r in caplog.records if r.name == "xensr.helper"]
    assert len(recs) == 1
    r = recs[0]
    assert r.levelno == pylevel
    assert (r.domid, r.xtl_context, r.xtl_errno, r.xtl_level) == (4, "xc", errno.EIO, level)
    assert r.helper_pid == op.pid
    assert r.getMessage() == "[domain 4] xc: some text: Input/output error"


def test_log_without_errno(fake, iofd, caplog):
    caplog.set_level(logging.DEBUG, logger="xensr.helper")
    script = Script().write(fh.log(C.XTL_INFO, 0xFFFFFFFF, b"xc", b"Saving")).save_ok()
    save_op(fake, script, iofd).run()
    (r,) = [r for r in caplog.records if r.name == "xensr.helper"]
    assert r.xtl_errno == -1 and r.getMessage() == "[domain 4] xc: Saving"


def test_helper_from_another_build_is_reported(fake, iofd, caplog):
    caplog.set_level(logging.WARNING, logger="xensr")
    text = b"starting save (xensr 9.9.9, table 0123456789abcdef)"
    op = save_op(fake, Script().write(fh.log(1, 0, b"libxl-save-helper", text)).save_ok(), iofd)
    op.run()
    assert op.helper_version == "9.9.9"
    warn = [r for r in caplog.records if r.name == "xensr"]
    assert len(warn) == 1 and "another build" in warn[0].getMessage()


def test_helper_from_this_build_is_not_reported(fake, iofd, caplog):
    caplog.set_level(logging.WARNING, logger="xensr")
    text = f"starting save (xensr 0.1.0, table {_xc.TABLE_DIGEST[:16]})".encode()
    op = save_op(fake, Script().write(fh.log(1, 0, b"libxl-save-helper", text)).save_ok(), iofd)
    op.run()
    assert op.helper_version == "0.1.0"
    assert not [r for r in caplog.records if r.name == "xensr"]


def test_file_object_is_flushed_before_the_helper_writes(fake, tmp_path):
    """What the application wrote through a buffered file object comes
    before the helper's bytes."""
    with open(tmp_path / "out", "w+b") as f:
        f.write(b"HEADER")
        op = xensr.SaveOperation(1, f, helper=fake.path,
                                 env=fake.env(Script().write_io(b"BODY").save_ok()))
        op.run()
        f.write(b"TRAILER")
    assert (tmp_path / "out").read_bytes() == b"HEADERBODYTRAILER"


def test_several_operations_driven_from_selectors(fake, tmp_path):
    """The loop-agnostic interface with the selectors module: three
    operations in one loop, one of which fails."""
    import selectors
    import time

    fds = [os.open(tmp_path / f"s{i}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
           for i in range(3)]
    scripts = [
        Script().write(fh.progress(b"xc", b"a", 1, 2)).request(fh.SUSPEND).save_ok(),
        Script().request(fh.SUSPEND).sleep(30).save_ok(),
        Script().write(fh.bare(42)).hang(),
    ]
    suspended = []

    class CB:
        def __init__(self, i):
            self.i = i

        def suspend(self):
            suspended.append(self.i)
            return True
    ops = [save_op(fake, s, fd, CB(i)) for i, (s, fd) in enumerate(zip(scripts, fds))]
    for op in ops:
        op.start()
    sel = selectors.DefaultSelector()
    try:
        while not all(op.done() for op in ops):
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
            deadlines = []
            for op in ops:
                for fd, ev in op.fds():
                    try:
                        sel.register(fd, ev, op)
                    except KeyError:
                        sel.modify(fd, sel.get_key(fd).events | ev, op)
                if op.next_deadline() is not None:
                    deadlines.append(op.next_deadline())
            wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, events in sel.select(wait):
                key.data.handle(key.fd, events)
            for op in ops:
                op.handle_timeout()
    finally:
        sel.close()
        for fd in fds:
            os.close(fd)
    assert sorted(suspended) == [0, 1]
    assert ops[0].result().callbacks == {"suspend": 1}
    assert ops[1].result().returncode == 0
    with pytest.raises(xensr.UnknownMessageError):
        ops[2].result()
