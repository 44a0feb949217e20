"""Spawning the helper: exec failures, the fds and signals it gets, fds
0-2 as io fd, O_NONBLOCK, and no fd of one operation reaching another
operation's helper."""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import threading

import pytest

import xensr
from xensr import _xc
from xensr.errors import HelperExitError, HelperStartError
from tests.support import fakehelper as fh
from tests.support.fakehelper import Script


@pytest.fixture
def iofile(tmp_path):
    fd = os.open(tmp_path / "stream", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    yield fd
    os.close(fd)


def save(fake, script, fd, **kw):
    kw.setdefault("env", fake.env(script))
    return xensr.SaveOperation(3, fd, helper=kw.pop("helper", fake.path), **kw)


# ----------------------------------------------------------------------
# Exec failures

def expect_start_error(op, err):
    with pytest.raises(HelperStartError) as info:
        op.run()
    assert info.value.errno == err
    assert not isinstance(info.value, HelperExitError)
    assert op.done()
    with pytest.raises(HelperStartError):
        op.result()
    return info.value


def test_missing_helper(tmp_path, iofile, counts):
    path = tmp_path / "no-such-helper"
    e = expect_start_error(xensr.SaveOperation(3, iofile, helper=path), errno.ENOENT)
    assert e.filename == str(path)
    assert "cannot execute helper" in str(e)


def test_helper_without_exec_bit(tmp_path, fake, iofile, counts):
    path = tmp_path / "helper"
    path.write_bytes(fake.path.read_bytes())
    path.chmod(0o644)
    expect_start_error(xensr.SaveOperation(3, iofile, helper=path), errno.EACCES)


def test_helper_is_a_directory(tmp_path, iofile, counts):
    expect_start_error(xensr.SaveOperation(3, iofile, helper=tmp_path), errno.EACCES)


def test_helper_not_an_executable_format(tmp_path, iofile, counts):
    path = tmp_path / "helper"
    path.write_bytes(b"\x00\x01 not an ELF file and no #! line")
    path.chmod(0o755)
    expect_start_error(xensr.SaveOperation(3, iofile, helper=path), errno.ENOEXEC)


def test_bare_helper_name_not_in_path(iofile, counts):
    expect_start_error(xensr.SaveOperation(3, iofile, helper="xensr-no-such-helper-x"),
                       errno.ENOENT)


def test_missing_helper_from_aio(tmp_path, iofile, counts):
    import asyncio
    import xensr.aio

    with pytest.raises(HelperStartError) as info:
        asyncio.run(xensr.aio.save_domain(3, iofile, helper=tmp_path / "nope"))
    assert info.value.errno == errno.ENOENT


def test_helper_from_environment_variable(fake, iofile, monkeypatch, counts):
    monkeypatch.setenv("XENSR_SAVE_HELPER", str(fake.path))
    s = Script().report().save_ok()
    op = xensr.SaveOperation(3, iofile, env=fake.env(s))
    op.run()
    assert op.helper == str(fake.path)
    assert fake.report().argv[0] == str(fake.path)


def test_helper_argument_beats_environment_variable(fake, iofile, tmp_path, monkeypatch):
    monkeypatch.setenv("XENSR_SAVE_HELPER", str(tmp_path / "nope"))
    op = save(fake, Script().save_ok(), iofile)
    op.run()
    assert op.helper == str(fake.path)


def test_packaged_helper_path():
    path = xensr.helper_path()
    assert path.endswith("xensr/bin/xensr-save-helper")
    assert os.access(path, os.X_OK)
    assert xensr.resolve_helper(None) in (path, os.environ.get("XENSR_SAVE_HELPER"))


def test_bad_io_fd_is_a_clear_error(tmp_path):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        xensr.SaveOperation(3, r, helper=tmp_path / "x").run()
    assert info.value.errno == errno.EBADF


# ----------------------------------------------------------------------
# What the helper gets

def test_argv_fds_and_signals_in_the_helper(fake, iofile, counts):
    os.set_blocking(iofile, False)
    op = save(fake, Script().report().save_ok(), iofile, live=True, debug=True)
    op.run()
    rep = fake.report()
    assert rep.argv == [str(fake.path), "--save-domain", str(iofile), "-1", "3",
                        "3", str(op.cbflags), "0"]
    assert op.cbflags == 136
    own = {n for n, t in rep.fds.items() if t.endswith(("/script%d" % fake.n, "/report%d" % fake.n))}
    assert set(rep.fds) - own == {0, 1, 2, iofile}
    assert rep.fds[0].startswith("pipe:") and rep.fds[1].startswith("pipe:")
    assert rep.fds[0] != rep.fds[1]
    # libxenguest does blocking I/O: O_NONBLOCK cleared for the helper...
    assert rep.ionb == 0
    # ... and restored afterwards.
    assert os.get_blocking(iofile) is False
    # SIGPIPE (ignored by Python) back to default; nothing blocked.
    assert not rep.ignored(signal.SIGPIPE)
    assert rep.sigblk == 0


def test_blocking_io_fd_stays_blocking(fake, iofile):
    assert os.get_blocking(iofile)
    save(fake, Script().report().save_ok(), iofile).run()
    assert fake.report().ionb == 0
    assert os.get_blocking(iofile)


def test_io_fd_restored_on_failure_paths(fake, iofile, tmp_path):
    os.set_blocking(iofile, False)
    for script in (Script().exit(255), Script().write(b"\x00\x00").hang()):
        with pytest.raises(xensr.XensrError):
            save(fake, script, iofile).run()
        assert os.get_blocking(iofile) is False
    with pytest.raises(HelperStartError):
        xensr.SaveOperation(3, iofile, helper=tmp_path / "nope").run()
    assert os.get_blocking(iofile) is False


def test_restore_argv_and_back_channel(fake, iofile, counts):
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        op = xensr.RestoreOperation(
            9, iofile, helper=fake.path, store_evtchn=4, console_evtchn=5,
            store_domid=6, console_domid=7, send_back_fd=w,
            env=fake.env(Script().report()
                         .write(fh.restore_results(1, 2)).save_ok()))
        res = op.run()
        rep = fake.report()
        assert rep.argv == [str(fake.path), "--restore-domain", str(iofile), str(w),
                            "9", "4", "6", "5", "7", "768", "0"]
        assert w in rep.fds and r not in rep.fds
        assert (res.store_gfn, res.console_gfn) == (1, 2)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("low", [0, 1, 2])
def test_io_fd_0_to_2_moved_out_of_the_way(fake, tmp_path, low):
    """docs/protocol.md §3: an io fd of 0-2 is passed as a duplicate >= 3, fd 0/1 are the
    pipes, and the application's fd is untouched afterwards."""
    saved = os.dup(low)
    target = os.open(tmp_path / "stream", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.dup2(target, low)
        op = save(fake, Script().report().save_ok(), low)
        op.run()
        rep = fake.report()
        io = int(rep.argv[2])
        assert io >= 3
        assert rep.fds[io] == str(tmp_path / "stream")
        assert rep.fds[0].startswith("pipe:") and rep.fds[1].startswith("pipe:")
        assert os.readlink(f"/proc/self/fd/{low}") == str(tmp_path / "stream")
    finally:
        os.dup2(saved, low)
        os.close(saved)
        os.close(target)


def test_inheritable_fds_of_the_application_do_not_reach_the_helper(fake, iofile):
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        save(fake, Script().report().save_ok(), iofile).run()
        assert r not in fake.report().fds
        assert w not in fake.report().fds
        assert os.get_inheritable(r)
    finally:
        os.close(r)
        os.close(w)


def pipe_inodes(op):
    co = op._callout
    return {f"pipe:[{os.fstat(fd).st_ino}]" for fd in (co.stdin_fd, co.stdout_fd)}


def test_concurrent_spawns_from_8_threads_share_no_fds(fake, tmp_path, counts):
    """Each helper holds exactly its own pipes, io fd and stderr, even when
    eight threads spawn at once."""
    n = 8
    barrier = threading.Barrier(n)
    ops = [None] * n
    errors = []
    scripts = []
    for i in range(n):
        # The log frame says the helper runs: past execve, which is where
        # a helper drops the close-on-exec fds it was born with (spawn
        # returns as soon as the exec succeeded, a little before that).
        s = Script().write(fh.log(5, 0, b"c", b"started")).sync().hang()
        scripts.append(fake.env(s))
    fds = [os.open(tmp_path / f"s{i}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
           for i in range(n)]

    def spawn(i):
        try:
            barrier.wait()
            for _ in range(5):      # several rounds to widen the window
                op = xensr.SaveOperation(3, fds[i], helper=fake.path, env=scripts[i])
                op.start()
                if ops[i] is not None:
                    ops[i].close()
                ops[i] = op
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=spawn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        mine = [pipe_inodes(op) for op in ops]
        for i, op in enumerate(ops):
            ready, _, _ = select.select([op._callout.stdout_fd], [], [], 30.0)
            assert ready, f"helper {i} did not start"
            held = {os.readlink(f"/proc/{op.pid}/fd/{fd}")
                    for fd in os.listdir(f"/proc/{op.pid}/fd")}
            for j, other in enumerate(mine):
                if j != i:
                    assert not (held & other), f"helper {i} holds pipes of operation {j}"
            assert mine[i] <= held
            files = {t for t in held if t.startswith(str(tmp_path))}
            assert files == {str(tmp_path / f"s{i}")}
    finally:
        for op in ops:
            if op is not None:
                op.close()
        for fd in fds:
            os.close(fd)


def test_callout_refuses_a_second_spawn(fake, iofile):
    co = _xc.Callout(_xc.DIR_SAVE, 136)
    co.spawn(fake.path, "--save-domain", iofile, -1, [1, 0, 136, 0],
             [b"FAKEHELPER_SCRIPT=/nonexistent"])
    try:
        with pytest.raises(RuntimeError):
            co.spawn(fake.path, "--save-domain", iofile, -1, [1, 0, 136, 0])
    finally:
        co.close()
    assert co.reaped and co.returncode is not None


def test_exec_failure_leaves_no_zombie_or_fd(tmp_path, iofile, counts):
    for _ in range(20):
        with pytest.raises(HelperStartError):
            xensr.SaveOperation(3, iofile, helper=tmp_path / "nope").start()


def test_callout_checks_stat_of_nonexecutable(tmp_path, iofile):
    path = tmp_path / "h"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(stat.S_IRUSR)
    co = _xc.Callout(_xc.DIR_SAVE, 136)
    with pytest.raises(HelperStartError) as info:
        co.spawn(path, "--save-domain", iofile, -1, [1, 0, 136, 0])
    assert info.value.errno == errno.EACCES
    assert co.pid == -1
    co.close()


def _env_bytes(env):
    return [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]


def test_error_pipe_read_once_tells_exec_failures_from_successes(fake, tmp_path, iofile, counts):
    """The error pipe is read once, without blocking, right after the
    spawn: a missing helper and a non-executable one are reported with
    their errno, interleaved with helpers that start, on every try."""
    missing = tmp_path / "missing"
    noexec = tmp_path / "noexec"
    noexec.write_text("#!/bin/sh\nexit 0\n")
    noexec.chmod(stat.S_IRUSR)
    good_env = _env_bytes(fake.env(Script().save_ok()))
    for i in range(40):
        for path, err in ((missing, errno.ENOENT), (noexec, errno.EACCES), (fake.path, 0)):
            co = _xc.Callout(_xc.DIR_SAVE, 136)
            try:
                if err:
                    with pytest.raises(HelperStartError) as info:
                        co.spawn(path, "--save-domain", iofile, -1, [1, 0, 136, 0], good_env)
                    assert info.value.errno == err, (i, path)
                    assert "cannot execute helper" in str(info.value)
                    assert co.pid == -1
                else:
                    pid = co.spawn(path, "--save-domain", iofile, -1, [1, 0, 136, 0], good_env)
                    assert pid > 0
                    rec = _Answer()
                    while co.reading:
                        _wait_readable(co.stdout_fd)
                        co.on_readable(rec)
                    while not co.poll_exit():
                        _wait_readable(co.pidfd)
                    assert co.completed and co.returncode == 0, (i, co.returncode)
            finally:
                co.close()


class _Answer:
    def msg_complete(self, retval, errnoval):
        return 0


def _wait_readable(fd):
    import select
    select.select([fd], [], [], 5.0)


@pytest.mark.parametrize("entry", [b"NOEQUALS", b"A=b\0c", "A=b"])
def test_bad_environment_entries_are_refused(fake, iofile, entry, counts):
    co = _xc.Callout(_xc.DIR_SAVE, 136)
    with pytest.raises((ValueError, TypeError)):
        co.spawn(fake.path, "--save-domain", iofile, -1, [1, 0, 136, 0], [b"X=1", entry])
    assert co.pid == -1
    co.close()


def test_environment_entries_may_be_bytes_like(fake, iofile, counts):
    env = _env_bytes(fake.env(Script().save_ok()))
    co = _xc.Callout(_xc.DIR_SAVE, 136)
    try:
        co.spawn(fake.path, "--save-domain", iofile, -1, [1, 0, 136, 0],
                 [bytearray(e) for e in env])
        while co.reading:
            _wait_readable(co.stdout_fd)
            co.on_readable(_Answer())
        while not co.poll_exit():
            _wait_readable(co.pidfd)
        assert co.completed and co.returncode == 0
    finally:
        co.close()


def test_same_environment_mapping_changed_between_operations(fake, iofile):
    """The encoded environment is reused only while the mapping is equal."""
    script = Script().save_ok()
    env = fake.env(script)
    xensr.save_domain(3, iofile, helper=fake.path, env=env)
    env["FAKEHELPER_REPORT"] = str(fake.workdir / "changed-report")
    xensr.save_domain(3, iofile, helper=fake.path, env=env)
    assert (fake.workdir / "changed-report").exists()
