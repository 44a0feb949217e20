"""xensr.aio: many operations in one thread, coroutine callbacks,
cancellation, and fd/child accounting over 200+ operations of every kind."""

from __future__ import annotations

import asyncio
import errno
import os
import signal

import pytest

import xensr
import xensr.aio
from xensr.errors import (Aborted, CallbackError, HelperExitError, HelperStartError,
                          HelperTimeout, ProtocolError, SaveRestoreError)
from tests.support import fakehelper as fh
from tests.support.fakehelper import Script

MIB = 1


class AsyncCallbacks:
    """Every callback a coroutine that yields to the loop."""

    def __init__(self):
        self.calls = []

    async def suspend(self):
        await asyncio.sleep(0.001)
        self.calls.append("suspend")
        return True

    async def switch_qemu_logdirty(self, domid, enable):
        await asyncio.sleep(0)
        self.calls.append(("logdirty", enable))

    async def progress(self, context, doing_what, done, total):
        self.calls.append("progress")


def test_100_saves_at_once_in_one_thread(simulated_host, helper, tmp_path):
    host = simulated_host
    n = 100
    doms = [host.create_domain(MIB, kind="hvm" if i % 2 else "pv", dirty_pages=32)
            for i in range(n)]
    fds, kids = fh.open_fds(), fh.children()
    files = [open(tmp_path / f"s{d}", "w+b") for d in doms]
    cbs = [AsyncCallbacks() for _ in doms]

    async def saves():
        return await asyncio.gather(*[
            xensr.aio.save_domain(d, f, cb, live=bool(i % 3), helper=helper, env=host.env)
            for i, (d, f, cb) in enumerate(zip(doms, files, cbs))])

    results = asyncio.run(saves())
    assert [r.domid for r in results] == doms
    assert all(r.returncode == 0 and r.retval == 0 for r in results)
    for d, cb in zip(doms, cbs):
        assert cb.calls.count("suspend") == 1
        if d % 2 == 0:      # odd index -> hvm; doms are 1..n
            assert ("logdirty", True) in cb.calls and ("logdirty", False) in cb.calls
    # Restore every tenth stream, concurrently, with a coroutine callback.
    picked = list(range(0, n, 10))
    for i in picked:
        files[i].seek(0)
    targets = [host.create_empty_domain() for _ in picked]

    class Static:
        def __init__(self):
            self.missing = None

        async def static_data_done(self, missing):
            await asyncio.sleep(0)
            self.missing = missing

    statics = [Static() for _ in picked]

    async def restores():
        return await asyncio.gather(*[
            xensr.aio.restore_domain(t, files[i], st, store_evtchn=1, console_evtchn=2,
                                     helper=helper, env=host.env)
            for t, i, st in zip(targets, picked, statics)])

    rres = asyncio.run(restores())
    for f in files:
        f.close()
    assert all(isinstance(r, xensr.RestoreResult) for r in rres)
    assert all(st.missing == 0 for st in statics)
    for i, t in zip(picked, targets):
        assert host.memory_digest(t) == host.memory_digest(doms[i])
    assert fh.open_fds() == fds and fh.children() == kids


def test_coroutine_callback_raises(fake, iofd):
    class CB:
        async def suspend(self):
            await asyncio.sleep(0)
            raise LookupError("no such guest")
    env = fake.env(Script().request(fh.SUSPEND).save_ok())

    async def main():
        return await xensr.aio.save_domain(1, iofd, CB(), helper=fake.path, env=env)
    with pytest.raises(CallbackError) as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, LookupError)
    assert info.value.callback == "suspend"
    # suspend answered "failed" (0), so that libxenguest unwinds; the
    # second is the fake's read after its complete (end of file).
    assert fake.report().replies == [0, 0]


def test_async_progress_raising(fake, iofd):
    class CB:
        async def progress(self, *a):
            raise ValueError("nope")
    env = fake.env(Script().write(fh.progress(b"xc", b"x", 0, 0)).sleep(50).save_ok())
    with pytest.raises(CallbackError) as info:
        asyncio.run(xensr.aio.save_domain(1, iofd, CB(), helper=fake.path, env=env))
    assert info.value.callback == "progress"


def test_coroutine_replies_are_mapped(fake, iofd):
    class CB:
        async def suspend(self):
            return False

        async def switch_qemu_logdirty(self, domid, enable):
            return False

        async def precopy_policy(self, stats):
            return xensr.PrecopyDecision.STOP_AND_COPY
    script = (Script().request(fh.SUSPEND).request(fh.logdirty(1, 1))
              .request(fh.precopy(1, 2, 3)).save_ok())
    asyncio.run(xensr.aio.save_domain(1, iofd, CB(), helper=fake.path, env=fake.env(script)))
    assert fake.report().replies == [0, -1, 1, 0]


def test_sync_callbacks_in_aio(fake, iofd):
    class CB:
        def suspend(self):
            return True
    script = Script().request(fh.SUSPEND).save_ok()
    res = asyncio.run(xensr.aio.save_domain(1, iofd, CB(), helper=fake.path,
                                            env=fake.env(script)))
    assert res.callbacks == {"suspend": 1}
    assert fake.report().replies == [1, 0]


def test_cancel_aborts_the_helper_and_cleans_up(fake, iofd):
    fds, kids = fh.open_fds(), fh.children()
    os.set_blocking(iofd, False)
    env = fake.env(Script().write(fh.log(1, 0, b"c", b"x")).hang())
    pids = []

    async def main():
        op = xensr.SaveOperation(1, iofd, helper=fake.path, env=env)
        task = asyncio.ensure_future(xensr.aio.run(op))
        await asyncio.sleep(0.05)
        pids.append(op.pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert op.done()
        assert isinstance(op.exception(), Aborted)
        assert op.returncode == fh.SIGTERMED
    asyncio.run(main())
    assert not os.path.exists(f"/proc/{pids[0]}")
    assert os.get_blocking(iofd) is False
    assert fh.open_fds() == fds and fh.children() == kids


def test_cancel_while_a_coroutine_callback_is_pending(fake, iofd):
    """The callback's task is cancelled, the helper gets "failed" at once
    and unwinds (it ignores SIGTERM here), then CancelledError."""
    state = {}

    class CB:
        async def suspend(self):
            state["started"] = True
            try:
                await asyncio.sleep(3600)
            finally:
                state["cancelled"] = True
    env = fake.env(Script().ignore_term().request(fh.SUSPEND)
                   .request(fh.complete(-1, errno.EINTR)))

    async def main():
        op = xensr.SaveOperation(1, iofd, CB(), helper=fake.path, env=env)
        task = asyncio.ensure_future(xensr.aio.run(op))
        while not state.get("started"):
            await asyncio.sleep(0.01)
        assert op.pending_request == "suspend"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return op
    op = asyncio.run(main())
    assert state["cancelled"]
    assert fake.report().replies == [0, 0]
    assert op.returncode == 0                   # it unwound, no SIGKILL needed
    assert isinstance(op.exception(), Aborted)


def test_second_cancel_kills(fake, iofd):
    env = fake.env(Script().ignore_term().hang())

    async def main():
        op = xensr.SaveOperation(1, iofd, helper=fake.path, env=env, kill_grace=60)
        task = asyncio.ensure_future(xensr.aio.run(op))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()          # waiting for the helper to go
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return op
    op = asyncio.run(main())
    assert op.returncode == fh.SIGKILLED


def test_abort_from_a_loop_timer_honours_the_kill_grace(fake, iofd):
    """abort() called outside the driver (a timer) still gets its SIGKILL
    when the helper ignores SIGTERM."""
    env = fake.env(Script().ignore_term().hang())

    async def main():
        op = xensr.SaveOperation(1, iofd, helper=fake.path, env=env, kill_grace=0.2)
        asyncio.get_running_loop().call_later(0.05, op.abort)
        with pytest.raises(Aborted):
            await xensr.aio.run(op)
        return op
    assert asyncio.run(main()).returncode == fh.SIGKILLED


def test_abort_from_another_thread_in_aio(fake, iofd):
    import threading
    env = fake.env(Script().ignore_term().hang())

    async def main():
        op = xensr.SaveOperation(1, iofd, helper=fake.path, env=env, kill_grace=0.2)
        threading.Timer(0.05, op.kill).start()
        with pytest.raises(Aborted):
            await xensr.aio.run(op)
        return op
    assert asyncio.run(main()).returncode == fh.SIGKILLED


def test_timeouts_in_aio(fake, iofd):
    env = fake.env(Script().ignore_term().hang())
    with pytest.raises(HelperTimeout) as info:
        asyncio.run(xensr.aio.save_domain(1, iofd, helper=fake.path, env=env,
                                          idle_timeout=0.1, kill_grace=0.1))
    assert info.value.kind == "idle"


def test_idle_deadline_moved_by_frames_does_not_time_out_in_aio(fake, iofd):
    """Frames keep the idle deadline moving later; the loop's timer, set
    for an earlier one, fires early and must only be set again."""
    script = Script()
    for i in range(8):
        script.write(fh.progress(b"save", b"pages", i, 8)).sleep(100)
    script.request(fh.SUSPEND).save_ok()
    calls = []
    res = asyncio.run(xensr.aio.save_domain(
        1, iofd, _Progress(calls), helper=fake.path, env=fake.env(script),
        idle_timeout=0.4))
    assert res.retval == 0 and calls == list(range(8))


class _Progress:
    def __init__(self, calls):
        self.calls = calls

    def progress(self, context, doing_what, done, total):
        self.calls.append(done)

    def suspend(self):
        return True


def test_deferred_reply_from_a_thread_free_loop(fake, iofd):
    """A callback returning DEFERRED, answered later from the loop."""
    class CB:
        def __init__(self):
            self.op = None

        def suspend(self):
            asyncio.get_running_loop().call_later(0.05, self.op.reply, True)
            return xensr.DEFERRED
    cb = CB()
    env = fake.env(Script().request(fh.SUSPEND).save_ok())

    async def main():
        cb.op = xensr.SaveOperation(1, iofd, cb, helper=fake.path, env=env)
        return await xensr.aio.run(cb.op)
    asyncio.run(main())
    assert fake.report().replies == [1, 0]


# ----------------------------------------------------------------------
# 200+ operations of every kind: nothing left behind.

def test_fds_and_children_return_to_where_they_started(simulated_host, fake, tmp_path, request):
    host = simulated_host
    helpers = [xensr.helper_path(), str(request.getfixturevalue("debian_helper"))]
    base = host.create_domain(MIB, kind="pv")
    good = tmp_path / "good"
    with open(good, "w+b") as f:
        xensr.save_domain(base, f, env=host.env)

    def env_with(fault):
        return dict(host.env, XENSR_SIMHOST_FAULT=fault) if fault else host.env

    class Raises:
        def suspend(self):
            raise RuntimeError("boom")

    def kinds(helper, rnd):
        """(name, coroutine factory, expected exception or None)."""
        def save(fault=None, cb=None, **kw):
            async def go():
                dom = host.create_domain(MIB, kind="pv")
                with open(tmp_path / f"s-{dom}", "w+b") as f:
                    return await xensr.aio.save_domain(dom, f, cb, helper=kw.pop("h", helper),
                                                       env=env_with(fault), **kw)
            return go

        def restore(fault=None, **kw):
            async def go():
                dst = host.create_empty_domain()
                with open(good, "rb") as f:
                    return await xensr.aio.restore_domain(dst, f, store_evtchn=1, console_evtchn=2,
                                                          helper=helper, env=env_with(fault), **kw)
            return go

        def cancelled():
            async def go():
                dom = host.create_domain(MIB, kind="pv")
                with open(tmp_path / f"s-{dom}", "w+b") as f:
                    task = asyncio.ensure_future(xensr.aio.save_domain(
                        dom, f, helper=helper, env=env_with("hang-at:suspend"), kill_grace=0.2))
                    await asyncio.sleep(0.05)
                    task.cancel()
                    await task
            return go

        def aborted():
            async def go():
                dom = host.create_domain(MIB, kind="pv")
                with open(tmp_path / f"s-{dom}", "w+b") as f:
                    op = xensr.SaveOperation(dom, f, helper=helper, kill_grace=0.2,
                                             env=env_with("hang-at:page:5"))
                    asyncio.get_running_loop().call_later(0.05, op.abort)
                    return await xensr.aio.run(op)
            return go

        def fake_protocol():
            async def go():
                return await xensr.aio.save_domain(
                    1, fake_io, helper=fake.path,
                    env=fake.env(Script().write(fh.bare(77)).hang()))
            return go

        idle = dict(idle_timeout=0.2, kill_grace=0.2)
        return [
            ("save", save(), None),
            ("live-save", save(live=True), None),
            ("restore", restore(), None),
            ("open-fail", save("open-fail"), HelperExitError),
            ("fail-at-page", save("fail-at-page:50:EIO"), SaveRestoreError),
            ("restore-fail", restore("fail-at-page:50:EIO@restore"), SaveRestoreError),
            ("signal", save("signal-at-page:50:SEGV"), HelperExitError),
            ("hang", save("hang-at:suspend", **idle), HelperTimeout),
            ("stall", save("stall:300", timeout=0.1, kill_grace=0.2), HelperTimeout),
            ("garbage", save("garbage-control:65536"), ProtocolError),
            ("exit-early", save("exit-early"), HelperExitError),
            ("exit-early-restore", restore("exit-early@restore"), HelperExitError),
            ("callback", save(cb=Raises()), CallbackError),
            ("missing-helper", save(h=str(tmp_path / "no-helper")), HelperStartError),
            ("cancelled", cancelled(), asyncio.CancelledError),
            ("aborted", aborted(), Aborted),
            ("fake-protocol", fake_protocol(), ProtocolError),
        ]

    def fake_kinds():
        """The same failure kinds against the fake helper (cheap to run)."""
        def op(script, expected, cb=None, **kw):
            env = fake.env(script)

            async def go():
                return await xensr.aio.save_domain(1, fake_io, cb, helper=kw.pop("h", fake.path),
                                                   env=env, **kw)
            return go, expected

        def cancel():
            env = fake.env(Script().hang())

            async def go():
                task = asyncio.ensure_future(xensr.aio.save_domain(
                    1, fake_io, helper=fake.path, env=env))
                await asyncio.sleep(0.02)
                task.cancel()
                await task
            return go, asyncio.CancelledError

        return [
            op(Script().request(fh.SUSPEND).save_ok(), None),
            op(Script().exit(255), HelperExitError),
            op(Script().die(signal.SIGSEGV), HelperExitError),
            op(Script().exit(0), HelperExitError),
            op(Script().write(fh.bare(99)).hang(), ProtocolError),
            op(Script().write(fh.SUSPEND[:3]).exit(0), ProtocolError),
            op(Script().request(fh.complete(-1, errno.EIO)), SaveRestoreError),
            op(Script().request(fh.SUSPEND).save_ok(), CallbackError, cb=Raises()),
            op(Script().ignore_term().hang(), HelperTimeout, idle_timeout=0.05, kill_grace=0.05),
            op(Script(), HelperStartError, h=str(tmp_path / "no-helper")),
            cancel(),
        ]

    fake_io = os.open(tmp_path / "fake-io", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fds, kids = fh.open_fds(), fh.children()
    count = 0
    seen = set()

    def run_batch(jobs, what):
        async def batch():
            return await asyncio.gather(*[factory() for _, factory, _ in jobs],
                                        return_exceptions=True)
        outcomes = asyncio.run(batch())
        for (name, _, expected), outcome in zip(jobs, outcomes):
            if expected is None:
                assert not isinstance(outcome, BaseException), (name, outcome)
            else:
                assert isinstance(outcome, expected), (name, outcome)
            seen.add(name)
        assert fh.open_fds() == fds, what
        assert fh.children() == kids, what
        return len(jobs)

    # Every kind on the simulated host with both helpers, twice.
    for rnd in range(2):
        count += run_batch([k for h in helpers for k in kinds(h, rnd)], f"simulated host round {rnd}")
    # And the fake helper's kinds, fourteen times each, all at once.
    count += run_batch([(f"fake-{i}", factory, expected)
                        for _ in range(14)
                        for i, (factory, expected) in enumerate(fake_kinds())], "fake")
    os.close(fake_io)
    assert count >= 200
    assert len(seen) == 17 + 11
