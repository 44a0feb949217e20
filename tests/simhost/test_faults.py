"""Each fault (XENSR_SIMHOST_FAULT) under Debian's unmodified
libxl-save-helper: the documented exit status, signal and frames; and the
old environment names, still read."""

from __future__ import annotations

import errno
import signal
import struct

import pytest

from tests.support import stream as st
from tests.support.parent import run_helper, save_args
from tests.support.simhost import assert_completed, restore_from_file, save_to_file

XTL_DEBUG, XTL_ERROR = 1, 8


def with_fault(host, spec):
    host.set_fault(spec)
    return host.env


@pytest.fixture
def saved(debian_helper, simulated_host, tmp_path):
    """A 4 MiB PV domain and a good stream of it."""
    host = simulated_host
    dom = host.create_domain(4, kind="pv")
    path = tmp_path / "good"
    t, _ = save_to_file(debian_helper, host, dom, path)
    assert_completed(t)
    return host, dom, path


def test_no_simhost_dir_fails_like_a_host_without_xen(debian_helper, simulated_host,
                                                      tmp_path):
    """Without XENSR_SIMHOST_DIR: exactly the frames Debian's helper sends on a
    machine without Xen (docs/protocol.md §11), exit status 255."""
    env = simulated_host.env
    del env["XENSR_SIMHOST_DIR"]
    fd = open(tmp_path / "s", "wb")
    t = run_helper(debian_helper, "save", save_args(7, 1, 136, 0), io_fd=fd.fileno(),
                   env=env, timeout=20)
    fd.close()
    assert t.returncode == 255
    expected = bytes.fromhex(
        "3200" "0100" "01000000" "00000000"
        "12000000") + b"libxl-save-helper\0" + bytes.fromhex("0e000000") + b"starting save\0"
    expected += bytes.fromhex("5200" "0100" "08000000" "02000000" "08000000") + b"xencall\0"
    expected += bytes.fromhex("38000000") + b"Could not obtain handle on privileged command interface\0"
    expected += bytes.fromhex("3d00" "0100" "08000000" "02000000" "12000000") + b"libxl-save-helper\0"
    expected += bytes.fromhex("19000000") + b"xc_interface_open failed\0"
    assert t.stdout == expected


@pytest.mark.parametrize("spec,err", [("open-fail", errno.ENOENT), ("open-fail:EACCES", errno.EACCES),
                                      ("open-fail:13", errno.EACCES)])
def test_open_fail(debian_helper, simulated_host, tmp_path, spec, err):
    dom = simulated_host.create_domain(1)
    t, data = save_to_file(debian_helper, simulated_host, dom, tmp_path / "s",
                           env=with_fault(simulated_host, spec))
    assert t.returncode == 255 and t.complete is None and data == b""
    first, second = t.logs[1:]
    assert (first["context"], first["level"], first["errnoval"]) == ("xencall", XTL_ERROR, err)
    assert first["formatted"] == "Could not obtain handle on privileged command interface"
    assert (second["formatted"], second["errnoval"]) == ("xc_interface_open failed", err)


def test_bad_fault_spec_refused(debian_helper, simulated_host, tmp_path):
    dom = simulated_host.create_domain(1)
    env = simulated_host.env
    env["XENSR_SIMHOST_FAULT"] = "fail-at-page:ten"
    t, _ = save_to_file(debian_helper, simulated_host, dom, tmp_path / "s", env=env)
    assert t.returncode == 255
    assert 'XENSR_SIMHOST_FAULT: bad fault "fail-at-page:ten"' in t.log_text()
    assert t.logs[-1]["errnoval"] == errno.EINVAL


def pages_in(data):
    s = st.parse(data, allow_eof_without_end=True)
    return sum(len(st.check_page_data(r)) for r in s.of("PAGE_DATA"))


def old_names_env(host, **values):
    """host.env with the directory (and faults) under the old names only."""
    env = host.env
    env["XENSR_SIM_DIR"] = env.pop("XENSR_SIMHOST_DIR")
    env.update(values)
    return env


def test_old_environment_names_still_work(debian_helper, simulated_host, tmp_path):
    """XENSR_SIM_DIR and XENSR_SIM_FAULT, the names before this release, are
    read when the new names are absent (a bad spec is reported under the
    name it came from)."""
    host = simulated_host
    dom = host.create_domain(1)
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s", env=old_names_env(host))
    assert_completed(t)
    assert len(data) > 256 * 4096
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s",
                           env=old_names_env(host, XENSR_SIM_FAULT="fail-at-page:3"))
    assert_completed(t, retval=-1)
    assert pages_in(data) == 3
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s",
                        env=old_names_env(host, XENSR_SIM_FAULT="bogus"))
    assert t.returncode == 255
    assert 'XENSR_SIM_FAULT: bad fault "bogus"' in t.log_text()


def test_new_environment_names_win(debian_helper, simulated_host, tmp_path):
    """When both names are set the new one wins, even when empty."""
    host = simulated_host
    dom = host.create_domain(1)
    env = dict(host.env, XENSR_SIM_DIR=str(tmp_path / "nowhere"),
               XENSR_SIMHOST_FAULT="fail-at-page:5", XENSR_SIM_FAULT="fail-at-page:9")
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s", env=env)
    assert_completed(t, retval=-1)
    assert pages_in(data) == 5
    env = dict(host.env, XENSR_SIMHOST_FAULT="", XENSR_SIM_FAULT="exit-early")
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", env=env)
    assert_completed(t)
    env = dict(host.env, XENSR_SIMHOST_DIR="", XENSR_SIM_DIR=str(host.state_dir))
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", env=env)
    assert t.returncode == 255 and t.complete is None


@pytest.mark.parametrize("kind", ["pv", "hvm"])
@pytest.mark.parametrize("live", [False, True])
def test_fail_at_page_save(debian_helper, simulated_host, tmp_path, kind, live):
    host = simulated_host
    dom = host.create_domain(8, kind=kind)
    n = 1500 if not live else 2048 + 100         # in the first / second round
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s", live=live,
                           env=with_fault(host, f"fail-at-page:{n}"))
    assert_completed(t, retval=-1)
    assert t.complete["errnoval"] == errno.EIO
    text = t.log_text()
    assert "xc: [8] Failed to map guest pages (5 = Input/output error): Internal error" in text
    assert "Save failed (5 = Input/output error)" in text
    if kind == "hvm":                            # cleanup still turns qemu log-dirty off
        assert t.calls == ["switch_qemu_logdirty", "suspend", "switch_qemu_logdirty",
                           "complete"] if not live else \
            ["switch_qemu_logdirty", "switch_qemu_logdirty", "complete"]
    s = st.parse(data, allow_eof_without_end=True)
    assert sum(len(st.check_page_data(r)) for r in s.of("PAGE_DATA")) == n
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    assert state["save_result"] == "failed"


def test_fail_at_page_restore(saved, debian_helper, tmp_path):
    host, dom, path = saved
    target = host.create_empty_domain()
    r = restore_from_file(debian_helper, host, target, path,
                          env=with_fault(host, "fail-at-page:300:ENOSPC"))
    assert_completed(r, retval=-1)
    assert r.complete["errnoval"] == errno.ENOSPC
    assert "Unable to map 1024 mfns for 1024 pages of data (28 = No space left on device)" \
        in r.log_text()
    assert "Restore failed (28 = No space left on device)" in r.log_text()
    assert [(m["store_gfn"], m["console_gfn"]) for m in r.restore_results] == [(0, 0)]
    got = host.read_pages(target, 0, 300)
    assert got == host.read_pages(dom, 0, 300)
    assert host.read_pages(target, 300) != host.read_pages(dom, 300)
    assert host.domain_state(target)["restore_result"] == "failed"


def test_fault_scope(saved, debian_helper, tmp_path):
    """@restore faults leave saves alone and the other way round."""
    host, dom, path = saved
    host.unpause(dom)
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s",
                        env=with_fault(host, "fail-at-page:0@restore"))
    assert_completed(t)
    target = host.create_empty_domain()
    r = restore_from_file(debian_helper, host, target, path,
                          env=with_fault(host, "fail-at-page:0@save,exit-early@save"))
    assert_completed(r)
    assert host.memory_digest(target) == host.memory_digest(dom)
    r = restore_from_file(debian_helper, host, host.create_empty_domain(), path,
                          env=with_fault(host, "fail-at-page:0@restore"))
    assert_completed(r, retval=-1)


@pytest.mark.parametrize("sig", ["SEGV", "ABRT", "SIGBUS"])
@pytest.mark.parametrize("mode", ["save", "restore"])
def test_signal_at_page(saved, debian_helper, tmp_path, sig, mode):
    host, dom, path = saved
    host.unpause(dom)
    env = with_fault(host, f"signal-at-page:100:{sig}")
    if mode == "save":
        t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", env=env)
    else:
        t = restore_from_file(debian_helper, host, host.create_empty_domain(), path, env=env)
    assert t.signal == int(signal.Signals["SIG" + sig.removeprefix("SIG")])
    assert t.complete is None and not t.killed_by_parent


@pytest.mark.parametrize("point,mode,kind,before", [
    ("suspend", "save", "pv", []),
    ("switch_qemu_logdirty", "save", "hvm", []),
    ("static_data_done", "restore", "pv", []),
    ("page:10", "save", "pv", ["suspend"]),
    ("page:10", "restore", "pv", ["static_data_done"]),
])
def test_hang_at(debian_helper, simulated_host, tmp_path, point, mode, kind, before):
    """The helper blocks at the point (the callback is never sent) until the
    parent gives up and kills it; in a save, SIGTERM (which Debian's helper
    handles) does not unblock it."""
    host = simulated_host
    dom = host.create_domain(1, kind=kind)
    if mode == "restore":
        assert_completed(save_to_file(debian_helper, host, dom, tmp_path / "s")[0])
    env = with_fault(host, f"hang-at:{point}")
    kw = dict(env=env, timeout=30, idle_timeout=1.0)
    if mode == "save":
        kw["on_idle"] = lambda ctl: ctl.terminate()
        t, _ = save_to_file(debian_helper, host, dom, tmp_path / "h", **kw)
        assert t.idle_hooks == 1
    else:
        t = restore_from_file(debian_helper, host, host.create_empty_domain(),
                              tmp_path / "s", **kw)
    assert t.timed_out == "idle" and t.killed_by_parent, t.summary()
    assert t.signal == signal.SIGKILL
    assert t.calls == before


def test_hang_at_checkpoint_remus(debian_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(1)
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "h", live=True, stream_type=1,
                        checkpoints=5, env=with_fault(host, "hang-at:checkpoint"),
                        idle_timeout=1.0)
    assert t.timed_out == "idle" and t.calls == ["suspend", "postcopy"]


def test_stall(debian_helper, simulated_host, tmp_path):
    """stall:MS sleeps before each batch: with a long stall the helper goes
    quiet right after announcing the first batch; without, it completes."""
    host = simulated_host
    dom = host.create_domain(1)
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s", idle_timeout=1.0,
                           env=with_fault(host, "stall:60000"))
    assert t.timed_out == "idle"
    assert t.progress[-1]["doing_what"] == "Frames" and t.progress[-1]["done"] == 0
    assert not st.parse(data, allow_eof_without_end=True).of("PAGE_DATA")
    host.unpause(dom)
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", idle_timeout=5.0,
                        env=with_fault(host, "stall:1"))
    assert_completed(t)


def test_log_flood(debian_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(1)
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s",
                        env=with_fault(host, "log-flood:500:200"))
    assert_completed(t)
    flood = [m for m in t.logs if m["formatted"].startswith("log flood line ")]
    assert len(flood) == 500
    assert all(len(m["formatted"]) == 200 and m["level"] == XTL_DEBUG
               and m["context"] == "xc" for m in flood)
    assert flood[7]["formatted"] == "log flood line 7 " + "x" * (200 - 17)


def test_log_flood_line_over_64k_aborts_debian_helper(debian_helper, simulated_host, tmp_path):
    """Debian's helper asserts that a frame fits in 64 KiB: SIGABRT."""
    host = simulated_host
    dom = host.create_domain(1)
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s",
                        env=with_fault(host, "log-flood:1:70000"))
    assert t.signal == signal.SIGABRT
    assert b"Assertion" in t.stderr
    assert t.complete is None


def test_truncate_stream(debian_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(2)
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s",
                           env=with_fault(host, "truncate-stream:5000"))
    assert_completed(t)                     # the lying sender claims success
    assert len(data) == 5000
    full_host_state = host.domain_state(dom)
    assert full_host_state["save_pages"] == 512
    host.clear_faults()
    r = restore_from_file(debian_helper, host, host.create_empty_domain(), tmp_path / "s")
    assert_completed(r, retval=-1)
    assert r.complete["errnoval"] == errno.EIO


def xorshift_garbage(n: int) -> bytes:
    state, out = 0x5eed, bytearray()
    mask = (1 << 64) - 1
    for _ in range(n):
        x = state
        x ^= x >> 12
        x ^= (x << 25) & mask
        x ^= x >> 27
        state = x
        out.append(((x * 0x2545F4914F6CDD1D) & mask) >> 56)
    return bytes(out)


@pytest.mark.parametrize("mode", ["save", "restore"])
def test_garbage_control(saved, debian_helper, tmp_path, mode):
    """The garbage lands on the control pipe right after the helper's first
    frame.  Its first two bytes announce a 51095-byte frame, so a parent
    (libxl as much as this one) waits for a body that never comes while the
    helper waits for a reply: only the idle timeout ends it."""
    host, dom, path = saved
    host.unpause(dom)
    env = with_fault(host, "garbage-control:64")
    kw = dict(env=env, idle_timeout=1.0)
    if mode == "save":
        t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", **kw)
    else:
        t = restore_from_file(debian_helper, host, host.create_empty_domain(), path, **kw)
    garbage = xorshift_garbage(64)
    assert garbage[0] | garbage[1] << 8 == 51095
    first = struct.unpack_from("=H", t.stdout)[0] + 2
    assert t.stdout[first:first + 64] == garbage
    assert [m.name for m in t.messages] == ["log"]
    assert t.timed_out == "idle" and t.pending == len(t.stdout) - first
    assert t.signal == signal.SIGKILL


@pytest.mark.parametrize("mode", ["save", "restore"])
def test_exit_early(saved, debian_helper, tmp_path, mode):
    host, dom, path = saved
    host.unpause(dom)
    env = with_fault(host, "exit-early")
    if mode == "save":
        t, data = save_to_file(debian_helper, host, dom, tmp_path / "s", env=env)
        assert data == b""
    else:
        t = restore_from_file(debian_helper, host, host.create_empty_domain(), path, env=env)
    assert t.returncode == 0 and t.complete is None and t.calls == []
    assert t.protocol_error is None


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_sigterm_unwinds_save(debian_helper, simulated_host, tmp_path, kind):
    """SIGTERM mid-save: Debian's helper dup2s /dev/null over the io fd; the
    simulated host's next write fails with EBADF and it unwinds like libxenguest."""
    host = simulated_host
    dom = host.create_domain(8, kind=kind)
    sent = []

    def term_after_first_batch(msg, ctl):
        if msg.number == 2 and msg["doing_what"] == "Frames" and msg["done"] and not sent:
            sent.append(1)
            ctl.terminate()

    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s",
                           env=with_fault(host, "stall:100"), on_message=term_after_first_batch)
    assert_completed(t, retval=-1)
    assert t.complete["errnoval"] == errno.EBADF
    assert "Failed to write page data to stream (9 = Bad file descriptor)" in t.log_text()
    if kind == "hvm":
        assert t.calls[-2:] == ["switch_qemu_logdirty", "complete"]
        assert t.find("switch_qemu_logdirty")[-1]["enable"] == 0
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    pages = sum(len(st.check_page_data(r)) for r in
                st.parse(data, allow_eof_without_end=True).of("PAGE_DATA"))
    assert 0 < pages < 2048


def test_suspend_refused_and_ignored(debian_helper, simulated_host, tmp_path):
    """A 0 suspend reply fails the save; a guest that ignores the request
    fails it with "Domain has not been suspended"."""
    host = simulated_host
    dom = host.create_domain(1)
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", replies={"suspend": 0})
    assert_completed(t, retval=-1)
    assert "save callback suspend() failed: 0" in t.log_text()
    assert host.domain_state(dom)["state"] == "running"
    lazy = host.create_domain(1, ignore_suspend=True)
    t, _ = save_to_file(debian_helper, host, lazy, tmp_path / "s", live=True)
    assert_completed(t, retval=-1)
    assert "Domain has not been suspended" in t.log_text()
    assert host.domain_state(lazy)["state"] == "running"


def wait_until_reading_stdin(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process is blocked in read(0, ...)."""
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            return
        if fields[:2] == ["0", "0x0"]:          # read, fd 0
            return
        time.sleep(0.005)
    raise AssertionError("helper never blocked reading its reply")


def test_sigterm_while_waiting_for_a_reply(debian_helper, simulated_host, tmp_path):
    """Reference behaviour of Debian's helper: a SIGTERM that arrives while
    it waits for a callback's reply interrupts its read, which it takes for
    EOF: exit status 254, no unwinding (a live save leaves log-dirty on)."""
    from tests.support.parent import NO_REPLY
    host = simulated_host
    dom = host.create_domain(1)

    def term_in_read(msg, ctl):
        if msg.name == "suspend":
            wait_until_reading_stdin(ctl.pid)
            ctl.terminate()

    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", live=True,
                        replies={"suspend": NO_REPLY}, on_message=term_in_read,
                        idle_timeout=5.0)
    assert t.returncode == 254 and t.calls == ["suspend"] and t.complete is None, t.summary()
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is True
