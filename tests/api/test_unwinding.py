"""Every failure unwinds cleanly: a callback that raises, returns a bad
value or is interrupted leaves no guest in log-dirty mode; the helper is
only ever signalled by the process that spawned it; a dead helper is an
error, never a SIGPIPE; out of fds, stalled frames, odd errno values and
reused fd numbers end in typed errors with nothing left behind."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import math
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import xensr
import xensr.aio
from xensr import _constants as C
from xensr import _xc
from xensr.errors import (Aborted, CallbackError, HelperExitError, HelperStartError,
                          ProtocolError, SaveRestoreError, StalledFrameError)
from tests.support import fakehelper as fh
from tests.support.fakehelper import Script
from tests.support.fixtures import ROOT

MIB = 4


class Guest:
    """Save callbacks of an HVM guest: QEMU's log-dirty is the toolstack's
    (switch_qemu_logdirty), the hypervisor's is the simulated host's."""

    def __init__(self, suspend):
        self._suspend = suspend
        self.qemu_logdirty = False

    def switch_qemu_logdirty(self, domid, enable):
        self.qemu_logdirty = enable

    def suspend(self):
        return self._suspend()


def assert_put_back(host, domid, guest):
    """libxenguest unwound: log-dirty off on both sides, guest running."""
    state = host.domain_state(domid)
    assert state["logdirty"] is False
    assert state["state"] == "running"
    assert state["save_result"] == "failed"
    assert guest.qemu_logdirty is False


def hvm_guest(host):
    return host.create_domain(MIB, kind="hvm", dirty_pages=16)


# ----------------------------------------------------------------------
# 1, 2: a callback that raises or returns a bad value unwinds as abort()

def _raise():
    raise RuntimeError("the guest would not suspend")


@pytest.mark.parametrize("suspend,cause", [
    (_raise, RuntimeError),
    (lambda: "yes", TypeError),
    (lambda: 1 << 40, ValueError),
], ids=["raises", "wrong-type", "beyond-c-int"])
def test_bad_callback_unwinds_the_save(host, helper, stream, counts, suspend, cause):
    dom = hvm_guest(host)
    guest = Guest(suspend)
    op = xensr.SaveOperation(dom, stream, guest, live=True, helper=helper, env=host.env,
                             kill_grace=60)
    with pytest.raises(CallbackError) as info:
        op.run()
    assert info.value.callback == "suspend"
    assert isinstance(info.value.__cause__, cause)
    assert op.returncode != fh.SIGKILLED        # it unwound, no SIGKILL needed
    assert_put_back(host, dom, guest)


def test_coroutine_callback_beyond_c_int_in_aio(host, helper, stream, counts):
    dom = hvm_guest(host)

    async def suspend():
        return 1 << 40
    guest = Guest(suspend)

    async def main():
        op = xensr.SaveOperation(dom, stream, guest, live=True, helper=helper,
                                 env=host.env, timeout=60, kill_grace=60)
        with pytest.raises(CallbackError) as info:
            await xensr.aio.run(op)
        return op, info.value
    op, err = asyncio.run(main())
    assert isinstance(err.__cause__, ValueError)
    assert op.returncode != fh.SIGKILLED
    assert_put_back(host, dom, guest)


def drive(op, on_pending):
    """A minimal loop of the caller's own: on_pending(op) whenever a
    deferred request waits."""
    sel = selectors.DefaultSelector()
    try:
        op.start()
        while not op.done():
            if op.pending_request is not None:
                on_pending(op)
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
            for fd, ev in op.fds():
                sel.register(fd, ev)
            for key, ev in sel.select(timeout=0.2):
                op.handle(key.fd, ev)
            op.handle_timeout()
    finally:
        sel.close()
    return op


def test_deferred_reply_beyond_c_int_keeps_the_request_pending(host, helper, stream, counts):
    dom = host.create_domain(MIB, kind="pv")
    refused = []

    def on_pending(op):
        assert op.pending_request == "suspend"
        if not refused:
            with pytest.raises(ValueError, match="does not fit"):
                op.reply(1 << 40)
            refused.append(True)
            assert op.pending_request == "suspend"      # still answerable
            with pytest.raises(TypeError):
                op.reply("yes")
            assert op.pending_request == "suspend"
        op.reply(True)

    cb = xensr.Callbacks(suspend=lambda: xensr.DEFERRED)
    op = drive(xensr.SaveOperation(dom, stream, cb, helper=helper, env=host.env,
                                   timeout=60), on_pending)
    assert refused and op.result().returncode == 0


# ----------------------------------------------------------------------
# 3: any errno value formats

@pytest.mark.parametrize("errnoval,suffix", [
    (0xFFFFFFEA, ": errno -22"),          # -EINVAL sent as a u32
    (0x80000000, ": errno -2147483648"),
    (0xFFFFFFFF, ""),                     # xentoollog's "no errno"
    (errno.EIO, ": " + os.strerror(errno.EIO)),
    (0x7FFFFFFF, None),                   # strerror's "Unknown error ..."
])
def test_format_log_line_any_errno(errnoval, suffix):
    line = _xc.format_log_line(8, errnoval, "xc", "failed")
    assert line.startswith("error: xc: failed")
    if suffix is not None:
        assert line == "error: xc: failed" + suffix


def test_huge_errno_log_line_then_failure_is_a_helper_exit_error(fake, iofd, counts):
    script = Script().write(fh.log(C.XTL_ERROR, 0xFFFFFFEA, b"xc", b"bad thing"))
    script.write(fh.log(C.XTL_ERROR, 0x80000001, b"xc", b"worse")).exit(1)
    op = xensr.SaveOperation(4, iofd, helper=fake.path, env=fake.env(script))
    with pytest.raises(HelperExitError) as info:
        op.run()
    assert info.value.status == 1
    assert op.log_tail == ("error: xc: bad thing: errno -22",
                           "error: xc: worse: errno -2147483647")


def test_save_restore_error_strerror_of_any_errno():
    assert SaveRestoreError("x", retval=-1, errno=1 << 40).strerror == f"errno {1 << 40}"
    assert SaveRestoreError("x", retval=-1, errno=errno.EIO).strerror == os.strerror(errno.EIO)


# ----------------------------------------------------------------------
# 4: Ctrl-C inside a blocking callback unwinds as abort()

@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt, as at an interactive prompt, even
    when the test run inherited SIGINT ignored (a job started with `&` by a
    non-interactive shell does)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_fixture_makes_sigint_raise(ctrl_c):
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_ctrl_c_in_a_blocking_callback_unwinds(ctrl_c, host, helper, stream, counts):
    dom = hvm_guest(host)

    def suspend():
        signal.raise_signal(signal.SIGINT)      # the user's Ctrl-C, mid-callback
        return True
    guest = Guest(suspend)
    op = xensr.SaveOperation(dom, stream, guest, live=True, helper=helper, env=host.env,
                             kill_grace=30)
    with pytest.raises(KeyboardInterrupt):
        op.run()
    assert isinstance(op.exception(), Aborted)
    assert op.returncode != fh.SIGKILLED
    assert_put_back(host, dom, guest)


def test_second_ctrl_c_kills_at_once(ctrl_c, fake, iofd, counts):
    presses = []

    class CB:
        def suspend(self):
            presses.append(1)
            signal.raise_signal(signal.SIGINT)
            return True

        def switch_qemu_logdirty(self, domid, enable):   # the undo, while stopping
            presses.append(2)
            signal.raise_signal(signal.SIGINT)
    script = Script().ignore_term().request(fh.SUSPEND).request(fh.logdirty(4, 0)).hang()
    op = xensr.SaveOperation(4, iofd, CB(), helper=fake.path, env=fake.env(script),
                             kill_grace=60)
    with pytest.raises(KeyboardInterrupt):
        op.run()
    assert presses == [1, 2]
    assert op.returncode == fh.SIGKILLED
    assert fake.report().replies[:1] == [0]


# ----------------------------------------------------------------------
# 5: only the spawning process signals or reaps the helper

@pytest.mark.parametrize("how", ["close", "drop"])
def test_forked_child_dropping_the_operation_does_not_kill_the_helper(
        host, stream, counts, how):
    dom = host.create_domain(MIB, kind="pv")
    child = []

    def suspend():
        # The helper waits for this reply while the child does its worst.
        _, status = os.waitpid(child[0], 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return True

    flags = fcntl.fcntl(stream, fcntl.F_GETFL)
    fcntl.fcntl(stream, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    op = xensr.SaveOperation(dom, stream, xensr.Callbacks(suspend=suspend),
                             env=host.env, timeout=60)
    op.start()
    pid = os.fork()
    if pid == 0:
        try:
            if how == "close":
                op.close()
            del op              # the child's only reference: dropped, collected
            gc.collect()
        finally:
            os._exit(0)
    child.append(pid)
    res = op.run()
    assert res.returncode == 0
    assert host.domain_state(dom)["save_result"] == "ok"
    assert fcntl.fcntl(stream, fcntl.F_GETFL) & os.O_NONBLOCK   # given back, by us


# ----------------------------------------------------------------------
# 8: a dead helper while a reply is written is EPIPE, never SIGPIPE

SIGPIPE_CHILD = textwrap.dedent("""
    import os, select, signal, sys
    sys.path.insert(0, sys.argv[1])
    import xensr
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as many CLI tools do
    if sys.argv[4] == "blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
    ops = []

    def suspend():
        select.select([ops[0]._callout.pidfd], [], [])   # the helper is gone
        return True
    fd = os.open(sys.argv[3], os.O_RDWR | os.O_CREAT, 0o600)
    env = dict(os.environ, FAKEHELPER_SCRIPT=sys.argv[5], FAKEHELPER_REPORT=sys.argv[6])
    ops.append(xensr.SaveOperation(4, fd, xensr.Callbacks(suspend=suspend),
                                   helper=sys.argv[2], env=env))
    try:
        ops[0].run()
    except xensr.XensrError as exc:
        print(type(exc).__name__, exc.reason)
    pending = signal.sigpending()
    print("pending", signal.SIGPIPE in pending)
""")


@pytest.mark.parametrize("mask", ["unblocked", "blocked"])
def test_dead_helper_is_epipe_never_sigpipe(fake, tmp_path, mask):
    env = fake.env(Script().write(fh.SUSPEND).exit(3))
    r = subprocess.run(
        [sys.executable, "-c", SIGPIPE_CHILD, str(ROOT), str(fake.path),
         str(tmp_path / "io"), mask, env["FAKEHELPER_SCRIPT"], env["FAKEHELPER_REPORT"]],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.splitlines() == ["HelperExitError status", "pending False"]


# ----------------------------------------------------------------------
# 9: out of fds anywhere in spawn

def test_out_of_fds_in_spawn_is_helper_start_error(fake, iofd, counts):
    script = Script().save_ok()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Fill the holes below the highest fd, so that a limit of top + 1 + k
    # leaves exactly k fds to allocate.
    top = max(fh.open_fds())
    fillers = []
    while True:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if fd > top:
            os.close(fd)
            break
        fillers.append(fd)
    outcomes = []
    try:
        for extra in range(1, 14):
            op = xensr.SaveOperation(4, iofd, helper=fake.path, env=fake.env(script))
            resource.setrlimit(resource.RLIMIT_NOFILE, (top + extra, hard))
            try:
                op.start()
            except HelperStartError as exc:
                outcomes.append(exc.errno)
                assert op.done() and op.exception() is exc
                continue
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            outcomes.append(0)
            op.run()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    assert set(outcomes) == {errno.EMFILE, 0}
    assert outcomes[-1] == 0


# ----------------------------------------------------------------------
# 10: the io fd's flags go back to the same open file only

@pytest.mark.parametrize("old_flags", [os.O_APPEND, os.O_APPEND | os.O_NONBLOCK],
                         ids=["blocking", "nonblocking"])
def test_io_flags_never_land_on_a_reused_fd_number(fake, tmp_path, old_flags):
    path = tmp_path / "stream"
    iofd = os.open(path, os.O_RDWR | os.O_CREAT | old_flags, 0o600)
    old_file = os.dup(iofd)          # the io fd's open file, for checking
    sock_a, sock_b = socket.socketpair()
    sock_a.setblocking(False)

    def suspend():
        # The caller closes its io fd mid-save; the number is reused by a
        # non-blocking socket.
        os.dup2(sock_a.fileno(), iofd)
        return True
    script = Script().request(fh.SUSPEND).save_ok()
    op = xensr.SaveOperation(4, iofd, xensr.Callbacks(suspend=suspend), helper=fake.path,
                             env=fake.env(script))
    try:
        op.run()
        flags = fcntl.fcntl(iofd, fcntl.F_GETFL)
        assert flags & os.O_NONBLOCK and not flags & os.O_APPEND
        assert fcntl.fcntl(old_file, fcntl.F_GETFL) & (os.O_APPEND | os.O_NONBLOCK) == old_flags
    finally:
        for fd in (iofd, old_file):
            os.close(fd)
        sock_a.close()
        sock_b.close()


# ----------------------------------------------------------------------
# 12: a frame begun and never finished ends the operation, typed

def test_stalled_partial_frame_is_a_protocol_error(host, helper, stream, counts):
    dom = host.create_domain(MIB, kind="pv")
    host.set_fault("garbage-control:3@save")
    op = xensr.SaveOperation(dom, stream, helper=helper, env=host.env, frame_timeout=0.3,
                             timeout=120)
    with pytest.raises(StalledFrameError) as info:
        op.run()
    assert isinstance(info.value, ProtocolError)
    assert info.value.seconds == 0.3 and info.value.offset > 0
    assert op.returncode == fh.SIGKILLED


def test_stalled_partial_frame_in_aio(host, helper, stream, counts):
    dom = host.create_domain(MIB, kind="pv")
    host.set_fault("garbage-control:3@save")

    async def main():
        with pytest.raises(StalledFrameError):
            await xensr.aio.save_domain(dom, stream, helper=helper, env=host.env,
                                        frame_timeout=0.3, timeout=120)
    asyncio.run(main())


def test_frame_timeout_default_is_finite_and_overridable(iofd):
    assert 0 < xensr.DEFAULT_FRAME_TIMEOUT < math.inf
    op = xensr.SaveOperation(4, iofd)
    assert op.frame_timeout == xensr.DEFAULT_FRAME_TIMEOUT
    assert xensr.SaveOperation(4, iofd, frame_timeout=None).frame_timeout is None
    assert xensr.SaveOperation(4, iofd, frame_timeout=2).frame_timeout == 2.0
    with pytest.raises(ValueError):
        xensr.SaveOperation(4, iofd, frame_timeout=0)


def test_slow_but_complete_frames_are_not_stalled(fake, iofd, counts):
    """A frame arriving in pieces, each within the timeout of its start."""
    data = fh.log(1, 0, b"xc", b"x" * 40) + fh.SUSPEND
    script = Script()
    for i in range(0, len(data), 7):
        script.write(data[i:i + 7]).sleep(20)
    script.reply().save_ok()
    op = xensr.SaveOperation(4, iofd, xensr.Callbacks(suspend=lambda: True),
                             helper=fake.path, env=fake.env(script), frame_timeout=0.5)
    assert op.run().returncode == 0


# ----------------------------------------------------------------------
# 13: precopy rounds, not policy calls

def test_precopy_iterations_counts_rounds(host, stream, counts):
    dom = host.create_domain(MIB, kind="pv", dirty_pages=64)
    calls = []

    def policy(stats):
        calls.append(stats)
        if stats.iteration >= 4 and stats.dirty_count == -1:
            return xensr.PrecopyDecision.STOP_AND_COPY
        return xensr.PrecopyDecision.CONTINUE_PRECOPY
    res = xensr.save_domain(dom, stream, xensr.Callbacks(precopy_policy=policy), live=True,
                            env=host.env)
    assert len(calls) == 8
    # Four rounds while the guest ran, then the last one once suspended.
    assert res.precopy_iterations == 4
    assert host.domain_state(dom)["save_iterations"] == 5


def test_precopy_stats_documents_the_second_call():
    doc = xensr.PrecopyStats.__doc__ or ""
    assert "dirty_count" in doc and "-1" in doc and "twice" in doc


# ----------------------------------------------------------------------
# 15: smaller warts

def test_exit_0_without_completion_has_status_0(fake, iofd):
    op = xensr.SaveOperation(4, iofd, helper=fake.path, env=fake.env(Script().exit(0)))
    with pytest.raises(HelperExitError) as info:
        op.run()
    assert (info.value.status, info.value.signal, info.value.reason) == (0, None,
                                                                          "no-completion")


@pytest.mark.parametrize("option", ["timeout", "idle_timeout", "kill_grace", "frame_timeout"])
@pytest.mark.parametrize("value", ["3", b"3", True])
def test_seconds_must_be_numbers(iofd, option, value):
    with pytest.raises(TypeError, match=option):
        xensr.SaveOperation(4, iofd, **{option: value})


def _python(code, **env):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=full)


def test_helper_errors_do_not_print_without_logging_configured(fake, tmp_path):
    env = fake.env(Script().write(fh.log(C.XTL_ERROR, 5, b"xc", b"Save failed")).exit(1))
    r = _python("""
        import os, xensr
        fd = os.open(os.environ["IOPATH"], os.O_RDWR | os.O_CREAT, 0o600)
        try:
            xensr.save_domain(4, fd, helper=os.environ["FAKE"])
        except xensr.HelperExitError:
            print("failed as expected")
    """, IOPATH=str(tmp_path / "io"), FAKE=str(fake.path),
        FAKEHELPER_SCRIPT=env["FAKEHELPER_SCRIPT"], FAKEHELPER_REPORT=env["FAKEHELPER_REPORT"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "failed as expected\n"
    assert r.stderr == ""


def test_dir_and_help_list_the_lazily_loaded_api():
    r = _python("""
        import pydoc, xensr
        names = dir(xensr)
        print(all(n in names for n in xensr.__all__))
        text = pydoc.render_doc(xensr, renderer=pydoc.plaintext)
        print("class SaveOperation" in text, "save_domain(" in text)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", "True"]


class Misspelled:
    def suspnd(self):
        return True


class NotCallable:
    suspend = True


class Fine:
    suspend = None          # None: no callback

    def suspended(self):    # extends a callback's name: deliberate
        return False

    def precopy_policy(self, stats):
        return 1


def test_misspelled_callback_warns(iofd):
    with pytest.warns(xensr.CallbackWarning, match="suspnd.*'suspend'"):
        xensr.SaveOperation(4, iofd, Misspelled())


def test_non_callable_callback_attribute_is_a_type_error(iofd):
    with pytest.raises(TypeError, match="'suspend' of NotCallable is not callable"):
        xensr.SaveOperation(4, iofd, NotCallable())


def test_none_and_longer_names_are_fine(iofd, recwarn):
    op = xensr.SaveOperation(4, iofd, Fine())
    assert not [w for w in recwarn if issubclass(w.category, xensr.CallbackWarning)]
    assert op.cbflags & (1 << C.MESSAGES_BY_NAME["precopy_policy"].number)
