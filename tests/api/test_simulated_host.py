"""The public API against the simulated host, with xensr's helper and with
Debian's unmodified libxl-save-helper: save then restore gives the same
memory, every simulated host fault gives its typed error, threads, and fd/child
accounting."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading

import pytest

import xensr
from xensr.errors import (HelperExitError, HelperTimeout, ProtocolError,
                          SaveRestoreError, UnknownMessageError)
from tests.support import fakehelper as fh

MIB = 4


def is_debian(helper):
    return helper.endswith("libxl-save-helper")


def rewind(fd):
    os.lseek(fd, 0, os.SEEK_SET)


class SaveCallbacks:
    def __init__(self):
        self.calls = []

    def suspend(self):
        self.calls.append("suspend")
        return True

    def switch_qemu_logdirty(self, domid, enable):
        self.calls.append(("logdirty", domid, enable))

    def progress(self, context, doing_what, done, total):
        self.calls.append("progress")


def restore(host, helper, fd, callbacks=None, **kw):
    dst = host.create_empty_domain()
    rewind(fd)
    res = xensr.restore_domain(dst, fd, callbacks, store_evtchn=11, console_evtchn=12,
                               store_domid=0, console_domid=0, helper=helper,
                               env=host.env, **kw)
    return dst, res


@pytest.mark.parametrize("kind", ["pv", "hvm"])
@pytest.mark.parametrize("live", [False, True], ids=["nonlive", "live"])
def test_save_then_restore(host, helper, stream, kind, live):
    src = host.create_domain(MIB, vcpus=2, kind=kind, dirty_pages=64)
    cb = SaveCallbacks()
    res = xensr.save_domain(src, stream, cb, live=live, helper=helper, env=host.env)
    assert isinstance(res, xensr.SaveResult)
    assert (res.retval, res.errno, res.returncode) == (0, 0, 0)
    assert res.callbacks["suspend"] == cb.calls.count("suspend") == 1
    if kind == "hvm":
        logdirty = [c for c in cb.calls if isinstance(c, tuple)]
        assert logdirty == [("logdirty", src, True), ("logdirty", src, False)]
    else:
        assert not [c for c in cb.calls if isinstance(c, tuple)]
    assert "progress" in cb.calls
    assert host.domain_state(src)["state"] == "suspended"
    dst, rres = restore(host, helper, stream)
    assert isinstance(rres, xensr.RestoreResult)
    state = host.domain_state(dst)
    assert (rres.store_gfn, rres.console_gfn) == (state["store_gfn"], state["console_gfn"])
    assert rres.callbacks == {"static_data_done": 1, "restore_results": 1}
    assert state["kind"] == kind and state["vcpus"] == 2
    assert state["store_evtchn"] == 11 and state["console_evtchn"] == 12
    assert host.memory_digest(dst) == host.memory_digest(src)


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_remus_three_checkpoints(host, helper, stream, kind):
    src = host.create_domain(MIB, kind=kind, dirty_pages=64)
    calls = []

    class Remus(SaveCallbacks):
        def postcopy(self):
            calls.append("postcopy")
            return True

        def checkpoint(self):
            calls.append("checkpoint")
            return calls.count("checkpoint") < 3       # another, another, stop

    res = xensr.save_domain(src, stream, Remus(), live=True, helper=helper, env=host.env,
                            stream_type=xensr.XC_STREAM_REMUS)
    assert res.callbacks["checkpoint"] == 3 and res.callbacks["postcopy"] == 3
    assert res.callbacks["suspend"] == 3
    assert host.domain_state(src)["state"] == "running"      # postcopy resumed it

    class Backup:
        n = 0

        def checkpoint(self):
            self.n += 1
            return xensr.CheckpointResult.SUCCESS

    backup = Backup()
    dst, rres = restore(host, helper, stream, backup, stream_type=xensr.XC_STREAM_REMUS)
    assert backup.n == 3
    assert host.memory_digest(dst) == host.memory_digest(src)


def test_precopy_policy_decides_when_to_stop(host, stream):
    src = host.create_domain(MIB, kind="pv", dirty_pages=64)
    seen = []

    class Policy(SaveCallbacks):
        def precopy_policy(self, stats):
            seen.append(stats)
            if stats.iteration >= 3:
                return xensr.PrecopyDecision.STOP_AND_COPY
            return xensr.XGS_POLICY_CONTINUE_PRECOPY

    res = xensr.save_domain(src, stream, Policy(), live=True, env=host.env)
    # Asked twice per round (the second time with dirty_count -1): rounds
    # 1, 2, 3 while the guest ran, asked about before each; it said stop
    # after the third.
    assert [(s.iteration, s.dirty_count == -1) for s in seen] == [
        (0, False), (1, True), (1, False), (2, True), (2, False), (3, True)]
    assert res.precopy_iterations == 3
    assert all(isinstance(s, xensr.PrecopyStats) for s in seen)
    # The simulated host's own policy would have gone on to 5 iterations.
    assert host.domain_state(src)["save_iterations"] == 4
    dst, _ = restore(host, xensr.helper_path(), stream)
    assert host.memory_digest(dst) == host.memory_digest(src)


def test_precopy_policy_abort(host, stream):
    src = host.create_domain(MIB, kind="pv")

    class Abort(SaveCallbacks):
        def precopy_policy(self, stats):
            return xensr.PrecopyDecision.ABORT
    with pytest.raises(SaveRestoreError) as info:
        xensr.save_domain(src, stream, Abort(), live=True, env=host.env)
    assert info.value.errno == errno.ECANCELED
    assert host.domain_state(src)["state"] == "running"


def test_precopy_policy_with_debians_helper_warns(host, stream, caplog, request):
    deb = str(request.getfixturevalue("debian_helper"))
    src = host.create_domain(MIB, kind="pv")
    seen = []

    class Policy(SaveCallbacks):
        def precopy_policy(self, stats):
            seen.append(stats)
            return 1
    caplog.set_level(logging.WARNING, logger="xensr")
    res = xensr.save_domain(src, stream, Policy(), live=True, helper=deb, env=host.env)
    assert seen == [] and res.precopy_iterations == 0
    assert any("precopy_policy will not be called" in r.getMessage() for r in caplog.records)


def test_suspend_refused(host, helper, stream):
    src = host.create_domain(MIB, kind="pv")

    class No:
        def suspend(self):
            return False
    with pytest.raises(SaveRestoreError):
        xensr.save_domain(src, stream, No(), helper=helper, env=host.env)
    assert host.domain_state(src)["state"] == "running"


def test_callback_error_with_a_real_helper(host, helper, stream):
    src = host.create_domain(MIB, kind="hvm")

    class Bad(SaveCallbacks):
        def switch_qemu_logdirty(self, domid, enable):
            raise OSError(errno.EPIPE, "qemu went away")
    with pytest.raises(xensr.CallbackError) as info:
        xensr.save_domain(src, stream, Bad(), helper=helper, env=host.env)
    assert info.value.__cause__.errno == errno.EPIPE
    assert info.value.callback == "switch_qemu_logdirty"


# ----------------------------------------------------------------------
# Every simulated host fault gives its typed error.

def check_status_255(e, helper):
    assert isinstance(e, HelperExitError) and e.status == 255
    assert any("xc_interface_open failed" in line for line in e.log_tail)


def check_errno(err):
    def check(e, helper):
        assert isinstance(e, SaveRestoreError) and e.errno == err and e.retval == -1
        assert any("failed" in line for line in e.log_tail)
    return check


def check_signal(sig):
    def check(e, helper):
        assert isinstance(e, HelperExitError) and e.signal == sig
    return check


def check_timeout(kind):
    def check(e, helper):
        assert isinstance(e, HelperTimeout) and e.kind == kind
    return check


def check_reason(reason):
    def check(e, helper):
        assert isinstance(e, HelperExitError) and e.reason == reason
    return check


def check_protocol(e, helper):
    assert isinstance(e, UnknownMessageError)


def check_flood_70000(e, helper):
    if is_debian(helper):
        # Debian's helper asserts on a frame over 64 KiB.
        assert isinstance(e, HelperExitError) and e.signal == signal.SIGABRT
    else:
        assert e is None


FAULTS = [
    # (spec, phase, check, kwargs)
    ("open-fail", "save", check_status_255, {}),
    ("open-fail", "restore", check_status_255, {}),
    ("fail-at-page:100:EIO", "save", check_errno(errno.EIO), {}),
    ("fail-at-page:100:ENOSPC@restore", "restore", check_errno(errno.ENOSPC), {}),
    ("signal-at-page:100:SEGV", "save", check_signal(signal.SIGSEGV), {}),
    ("signal-at-page:10:BUS@restore", "restore", check_signal(signal.SIGBUS), {}),
    ("hang-at:suspend", "save", check_timeout("idle"), dict(idle_timeout=0.3, kill_grace=0.2)),
    ("hang-at:page:10", "save", check_timeout("idle"), dict(idle_timeout=0.3, kill_grace=0.2)),
    ("hang-at:static_data_done@restore", "restore", check_timeout("idle"),
     dict(idle_timeout=0.3, kill_grace=0.2)),
    ("stall:400", "save", check_timeout("timeout"), dict(timeout=0.2, kill_grace=0.2)),
    ("garbage-control:65536", "save", check_protocol, {}),
    ("garbage-control:65536@restore", "restore", check_protocol, {}),
    # A few garbage bytes announce a long frame that swallows what follows:
    # the helper waits for a reply that cannot come.
    ("garbage-control:64", "save", check_timeout("idle"), dict(idle_timeout=0.3, kill_grace=0.2)),
    ("exit-early", "save", check_reason("no-completion"), {}),
    ("exit-early@restore", "restore", check_reason("no-results"), {}),
    ("log-flood:3:70000", "save", check_flood_70000, {}),
]


@pytest.mark.parametrize("spec,phase,check,kw", FAULTS, ids=[f"{f[0]}-{f[1]}" for f in FAULTS])
def test_rig_fault(host, helper, stream, spec, phase, check, kw):
    src = host.create_domain(MIB, kind="pv")
    if phase == "restore":
        xensr.save_domain(src, stream, helper=helper, env=host.env)
    host.set_fault(spec)
    err = None
    try:
        if phase == "save":
            xensr.save_domain(src, stream, helper=helper, env=host.env, **kw)
        else:
            restore(host, helper, stream, **kw)
    except xensr.XensrError as e:
        err = e
    check(err, helper)
    if err is not None and not isinstance(err, SaveRestoreError):
        assert phase != "save" or host.domain_state(src)["state"] in ("running", "suspended")


def test_log_flood(host, helper, stream, caplog):
    caplog.set_level(logging.DEBUG, logger="xensr.helper")
    src = host.create_domain(MIB, kind="pv")
    host.set_fault("log-flood:3000@save")
    res = xensr.save_domain(src, stream, helper=helper, env=host.env)
    assert res.log_lines >= 3000
    flood = [r for r in caplog.records if "log flood line" in r.getMessage()]
    assert len(flood) == 3000
    assert flood[-1].xtl_context == "xc" and flood[-1].levelno == logging.DEBUG


def test_truncated_stream_fails_the_restore(host, helper, stream):
    src = host.create_domain(MIB, kind="pv")
    host.set_fault("truncate-stream:5000@save")
    xensr.save_domain(src, stream, helper=helper, env=host.env)   # a lying sender
    assert os.fstat(stream).st_size == 5000
    host.clear_faults()
    with pytest.raises(SaveRestoreError) as info:
        restore(host, helper, stream)
    assert info.value.errno == errno.EIO


# ----------------------------------------------------------------------
# Threads, and the fds one helper holds while another runs.

def test_restore_refuses_a_file_object_that_read_ahead(host, stream, tmp_path):
    """A buffered file object that has been read from holds bytes the fd has
    passed: the helper would start mid-stream and fail later on what looks
    like a corrupt stream.  Refused before any helper runs (even after a
    seek(0) that the buffer served without moving the fd); an untouched
    file object restores."""
    src = host.create_domain(MIB, kind="pv")
    xensr.save_domain(src, stream, SaveCallbacks(), env=host.env)
    with open(os.path.join(tmp_path, "stream"), "rb") as f:
        f.read(8)
        dst = host.create_empty_domain()
        with pytest.raises(ValueError, match="read ahead"):
            xensr.restore_domain(dst, f, store_evtchn=1, console_evtchn=2, env=host.env)
        f.seek(0)
        with pytest.raises(ValueError, match="read ahead"):
            xensr.restore_domain(dst, f, store_evtchn=1, console_evtchn=2, env=host.env)
    with open(os.path.join(tmp_path, "stream"), "rb") as f:
        xensr.restore_domain(dst, f, store_evtchn=1, console_evtchn=2, env=host.env)
    assert host.memory_digest(dst) == host.memory_digest(src)


def test_8_threads_of_blocking_saves(host, helper, tmp_path):
    n, per = 8, 3
    doms = [host.create_domain(MIB, kind="hvm" if i % 2 else "pv") for i in range(n * per)]
    results, errors = [], []

    def worker(i):
        try:
            for j in range(per):
                dom = doms[i * per + j]
                with open(tmp_path / f"s{dom}", "w+b") as f:
                    results.append((dom, xensr.save_domain(dom, f, SaveCallbacks(), live=j % 2 == 1,
                                                           helper=helper, env=host.env)))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    fds, kids = fh.open_fds(), fh.children()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(d for d, _ in results) == doms
    assert all(r.returncode == 0 for _, r in results)
    assert fh.open_fds() == fds and fh.children() == kids
    # Spot-check that the streams are good.
    for dom in doms[:2]:
        with open(tmp_path / f"s{dom}", "rb") as f:
            dst, _ = restore(host, helper, f.fileno())
        assert host.memory_digest(dst) == host.memory_digest(dom)


def test_8_threads_of_blocking_saves_and_restores_mixed(host, helper, tmp_path):
    """Saves and restores at once, with a log flood in the mix."""
    src = host.create_domain(MIB, kind="pv")
    with open(tmp_path / "base", "w+b") as f:
        xensr.save_domain(src, f, helper=helper, env=host.env)
    doms = [host.create_domain(MIB, kind="pv") for _ in range(4)]
    errors, digests = [], {}

    def saver(dom):
        try:
            with open(tmp_path / f"s{dom}", "w+b") as f:
                xensr.save_domain(dom, f, live=True, helper=helper, env=host.env)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def restorer(i):
        try:
            with open(tmp_path / "base", "rb") as f:
                dst = host.create_empty_domain()
                xensr.restore_domain(dst, f, store_evtchn=1, console_evtchn=2,
                                     helper=helper, env=host.env)
                digests[i] = host.memory_digest(dst)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(d,)) for d in doms]
    threads += [threading.Thread(target=restorer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(digests.values()) == {host.memory_digest(src)}


def proc_fds(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def own_pipes(op):
    co = op._callout
    return {f"pipe:[{os.fstat(fd).st_ino}]" for fd in (co.stdin_fd, co.stdout_fd)}


def test_a_running_helper_holds_none_of_another_operations_fds(host, helper, tmp_path):
    """Operation A's helper hangs; during B's suspend callback both helpers
    are alive: each holds its own pipes and stream file, none of the other's."""
    import asyncio
    import xensr.aio

    a_dom = host.create_domain(MIB, kind="pv")
    b_dom = host.create_domain(MIB, kind="pv")
    env_a = dict(host.env, XENSR_SIMHOST_FAULT="hang-at:suspend")
    fds, kids = fh.open_fds(), fh.children()
    fa = open(tmp_path / "a", "w+b")
    fb = open(tmp_path / "b", "w+b")
    checked = []

    async def main():
        a = xensr.SaveOperation(a_dom, fa, helper=helper, env=env_a, kill_grace=0.2)
        a.start()
        task_a = asyncio.ensure_future(xensr.aio.run(a))
        b = None

        class B:
            async def suspend(self):
                held_a, held_b = proc_fds(a.pid), proc_fds(b.pid)
                assert own_pipes(a) <= held_a and own_pipes(b) <= held_b
                assert not (own_pipes(b) & held_a)
                assert not (own_pipes(a) & held_b)
                assert str(tmp_path / "a") in held_a and str(tmp_path / "a") not in held_b
                assert str(tmp_path / "b") in held_b and str(tmp_path / "b") not in held_a
                checked.append(True)
                return True
        b = xensr.SaveOperation(b_dom, fb, B(), helper=helper, env=host.env)
        res = await xensr.aio.run(b)
        assert res.returncode == 0
        assert not task_a.done()
        task_a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_a
        assert a.done() and a.returncode == fh.SIGKILLED
        return a.pid

    pid_a = asyncio.run(main())
    fa.close()
    fb.close()
    assert checked == [True]
    assert not os.path.exists(f"/proc/{pid_a}")
    assert fh.open_fds() == fds and fh.children() == kids
