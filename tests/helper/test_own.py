"""xensr-save-helper where it goes beyond, or deliberately differs from,
Debian's libxl-save-helper: the precopy_policy extension, over-long log
lines, SIGTERM while a reply is awaited, the parent's signal state, and
memory safety (valgrind, AddressSanitizer + UBSan builds) on the simulated host."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import stream as st
from tests.support.parent import (
    CBFLAGS_RESTORE_PLAIN, CBFLAGS_SAVE_PLAIN, MessageSpec, restore_args, restore_argv,
    run_helper, save_args, save_argv,
)
from tests.support.fixtures import valgrind_output
from tests.support.simhost import assert_completed, restore_from_file, save_to_file
from xensr import _constants as C

ROOT = Path(__file__).resolve().parents[2]
OURS = ROOT / "xensr" / "bin" / "xensr-save-helper"

PRECOPY = {
    C.MSG_PRECOPY_POLICY: MessageSpec(
        "precopy_policy", "s", "W", True,
        (("iteration", "uint"), ("total_written", "ulong"), ("dirty_count", "long"))),
}
CBFLAGS_PRECOPY = CBFLAGS_SAVE_PLAIN | C.CBFLAG_PRECOPY_POLICY
# Largest log text from context "xc" that fits a frame: body 65535 =
# type 2 + level 4 + errno 4 + (4 + "xc\0") + (4 + text + NUL).
MAX_XC_TEXT = C.FRAME_BODY_MAX - 2 - 4 - 4 - (4 + 3) - (4 + 1)


@pytest.fixture(scope="module")
def ours(simhost_libs) -> Path:
    assert os.access(OURS, os.X_OK), f"{OURS} is not built"
    return OURS


def policy_calls(t):
    return [(m["iteration"], m["total_written"], m["dirty_count"])
            for m in t.find("precopy_policy")]


# ---------------------------------------------------------------------------
# precopy_policy (message 11, cbflags bit 11)

def test_precopy_policy_stop_and_copy_is_obeyed(ours, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(8, kind="pv", dirty_pages=300)
    nr = host.domain_state(dom)["nr_pages"]
    stop_at_2 = {"precopy_policy": lambda m, t: C.XGS_POLICY_STOP_AND_COPY
                 if m["iteration"] >= 2 else C.XGS_POLICY_CONTINUE_PRECOPY}
    t, data = save_to_file(ours, host, dom, tmp_path / "s", live=True, cbflags=CBFLAGS_PRECOPY,
                           extra_messages=PRECOPY, replies=stop_at_2)
    assert_completed(t)
    # libxenguest's stats, by value: before each round the pages to send,
    # after it -1; total_written accumulates.
    calls = policy_calls(t)
    assert calls[:2] == [(0, 0, nr), (1, nr, -1)]
    assert calls[-1][0] == 2 and len(calls) == 4
    assert calls[2][1] == nr and 0 < calls[2][2] <= 300
    assert calls[3][1] == nr + calls[2][2]
    assert t.calls == ["precopy_policy"] * 4 + ["suspend", "complete"]
    assert [v for m, v in t.replies if m.name == "precopy_policy"] == [0, 0, 0, 1]
    # Two precopy rounds and the final one: the default policy (see the
    # Debian test below) would have gone on to round 5.
    assert host.domain_state(dom)["save_iterations"] == 3
    target = host.create_empty_domain()
    assert_completed(restore_from_file(ours, host, target, tmp_path / "s"))
    assert host.memory_digest(target) == host.memory_digest(dom)


def test_precopy_policy_abort_fails_the_save(ours, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(8, kind="hvm", dirty_pages=300)
    abort_at_1 = {"precopy_policy": lambda m, t: C.XGS_POLICY_ABORT
                  if m["iteration"] >= 1 else C.XGS_POLICY_CONTINUE_PRECOPY}
    t, _ = save_to_file(ours, host, dom, tmp_path / "s", live=True, cbflags=CBFLAGS_PRECOPY,
                        extra_messages=PRECOPY, replies=abort_at_1)
    assert_completed(t, retval=-1)
    assert t.complete["errnoval"] == errno.ECANCELED
    assert "Abort precopy loop" in t.log_text()
    assert len(policy_calls(t)) == 2 and "suspend" not in t.calls
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False


@pytest.mark.parametrize("which", ["ours", "debian"])
def test_precopy_policy_default_when_not_routed(which, ours, debian_helper, simulated_host,
                                                 tmp_path):
    """Without bit 11 xensr's helper leaves libxenguest's own policy in
    place; Debian's helper ignores bit 11 altogether."""
    helper = ours if which == "ours" else debian_helper
    host = simulated_host
    dom = host.create_domain(8, kind="pv", dirty_pages=300)
    cbflags = CBFLAGS_SAVE_PLAIN if which == "ours" else CBFLAGS_PRECOPY
    t, _ = save_to_file(helper, host, dom, tmp_path / "s", live=True, cbflags=cbflags,
                        extra_messages=PRECOPY)
    assert_completed(t)
    assert t.find("precopy_policy") == []
    assert host.domain_state(dom)["save_iterations"] == 6


def test_precopy_bit_ignored_by_restore(ours, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(2)
    assert_completed(save_to_file(ours, host, dom, tmp_path / "s")[0])
    target = host.create_empty_domain()
    r = restore_from_file(ours, host, target, tmp_path / "s",
                          cbflags=CBFLAGS_RESTORE_PLAIN | C.CBFLAG_PRECOPY_POLICY)
    assert_completed(r)
    assert r.calls == ["static_data_done", "restore_results", "complete"]


# ---------------------------------------------------------------------------
# Log text over 64 KiB: truncated by xensr, an abort in Debian's helper

@pytest.mark.parametrize("length", [MAX_XC_TEXT + 1, 70000, 1 << 20])
def test_overlong_log_line_is_truncated(ours, simulated_host, tmp_path, length):
    host = simulated_host
    dom = host.create_domain(1)
    host.set_fault(f"log-flood:2:{length}")
    t, _ = save_to_file(ours, host, dom, tmp_path / "s")
    assert_completed(t)
    flood = [m for m in t.logs if m["context"] == "xc" and m["formatted"].startswith("log flood")]
    assert len(flood) == 2
    for i, m in enumerate(flood):
        text = f"log flood line {i} "
        assert m["formatted"] == (text + "x" * (length - len(text)))[:MAX_XC_TEXT]
        assert len(m.raw) == C.FRAME_BODY_MAX


@pytest.mark.parametrize("length", [MAX_XC_TEXT + 1, 70000])
def test_overlong_log_line_aborts_debian_helper(debian_helper, simulated_host, tmp_path, length):
    host = simulated_host
    dom = host.create_domain(1)
    host.set_fault(f"log-flood:1:{length}")
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s")
    assert t.signal == signal.SIGABRT and t.complete is None


# ---------------------------------------------------------------------------
# Signals

def wait_signal_taken(pid: int, deadline: float = 20.0) -> None:
    """Until the process has no signal pending (or is gone)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except FileNotFoundError:
            return
        if status["State"].strip().startswith("Z"):
            return
        if int(status["SigPnd"], 16) == 0 and int(status["ShdPnd"], 16) == 0:
            return
        time.sleep(0.001)
    raise AssertionError(f"signal still pending in {pid}")


def wait_reading_stdin(pid: int, deadline: float = 20.0) -> None:
    """Until the process is blocked in read(0, ...) (x86-64 syscall 0)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().startswith("0 0x0 "):
                return
        time.sleep(0.001)
    raise AssertionError(f"{pid} never blocked reading its stdin")


def term_while_awaiting(name):
    """SIGTERM once the helper waits in read() for the reply to NAME; the
    reply goes out only after the signal has been taken."""
    def hook(msg, ctl):
        if msg.name == name:
            wait_reading_stdin(ctl.pid)
            ctl.terminate()
            wait_signal_taken(ctl.pid)
    return hook


def test_sigterm_while_awaiting_reply(ours, debian_helper, simulated_host, tmp_path):
    """SIGTERM while the suspend reply is awaited, the reply sent after the
    handler ran: xensr's helper reads it and libxc unwinds (EBADF on the io
    fd, complete -1); Debian's helper leaves at once with status 254."""
    host = simulated_host
    dom = host.create_domain(4, kind="hvm")
    t, data = save_to_file(ours, host, dom, tmp_path / "ours",
                           on_message=term_while_awaiting("suspend"))
    assert_completed(t, retval=-1)
    assert t.complete["errnoval"] == errno.EBADF
    assert [v for m, v in t.replies if m.name == "suspend"] == [1]
    assert t.calls[-2:] == ["switch_qemu_logdirty", "complete"]   # logdirty off again
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    assert not st.parse(data, allow_eof_without_end=True).of("PAGE_DATA")

    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "debian",
                        on_message=term_while_awaiting("suspend"))
    assert t.returncode == 254 and t.complete is None


LAUNCHER = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGPIPE])\n"
    "signal.signal(signal.SIGPIPE, signal.SIG_IGN)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


@pytest.mark.parametrize("which", ["ours", "debian"])
def test_sigterm_unblocked_whatever_the_parent_left(which, ours, debian_helper,
                                                    simulated_host, tmp_path):
    """A parent that leaves SIGTERM blocked: both helpers unblock it, so a
    restore still dies of it and a save still unwinds."""
    helper = ours if which == "ours" else debian_helper
    host = simulated_host
    dom = host.create_domain(2)
    assert_completed(save_to_file(helper, host, dom, tmp_path / "s")[0])
    host.unpause(dom)

    fd = os.open(tmp_path / "s", os.O_RDONLY | os.O_CLOEXEC)
    try:
        args = restore_args(host.create_empty_domain())
        argv = ["python", "-c", LAUNCHER, *restore_argv(str(helper), fd, -1, args)]
        r = run_helper(sys.executable, "restore", args, io_fd=fd, env=host.env, argv=argv,
                       on_message=term_while_awaiting("static_data_done"), timeout=30)
    finally:
        os.close(fd)
    assert r.signal == signal.SIGTERM, r.summary()

    # A save: SIGTERM between two stalled batches of pages; libxc unwinds.
    big = host.create_domain(8)
    host.set_fault("stall:400")
    sent = []

    def term_after_first_batch(msg, ctl):
        if msg.name == "progress" and msg["done"] and not sent:
            sent.append(1)
            ctl.terminate()

    fd = os.open(tmp_path / "s2", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        args = save_args(big, 0, CBFLAGS_SAVE_PLAIN, 0)
        argv = ["python", "-c", LAUNCHER, *save_argv(str(helper), fd, -1, args)]
        t = run_helper(sys.executable, "save", args, io_fd=fd, env=host.env, argv=argv,
                       on_message=term_after_first_batch, timeout=30)
    finally:
        os.close(fd)
    assert_completed(t, retval=-1)
    assert t.complete["errnoval"] == errno.EBADF


def test_sigpipe_default_even_if_parent_ignores_it(ours, tmp_path):
    """libxl resets SIGPIPE in the child; xensr's helper does it itself, so
    a vanished parent ends it by SIGPIPE whatever it inherited."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-c", LAUNCHER, str(OURS), "--save-domain", "5", "-1",
                            "1", "0", "136", "0"], stdin=subprocess.DEVNULL, stdout=w,
                           stderr=subprocess.PIPE, timeout=30)
    finally:
        os.close(w)
    assert p.returncode == -signal.SIGPIPE, p.stderr


def test_closed_stdout_is_status_255(ours):
    p = subprocess.run([str(OURS), "--save-domain", "5", "-1", "1", "0", "136", "0"],
                       stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30,
                       preexec_fn=lambda: os.close(1))
    assert p.returncode == 255
    assert p.stderr.decode() == "xensr-save-helper: write to parent (stdout): Bad file descriptor\n"


# ---------------------------------------------------------------------------
# Memory safety on the simulated host: valgrind, and an ASan + UBSan build

def exercise(helper, host, tmp, argv_prefix=(), env=None):
    """A live HVM save with every save callback the simulated host uses, a restore of
    it, and a save with an over-long log line; returns the transcripts."""
    env = dict(host.env if env is None else env)
    out = []

    def run(mode, args, path, flags, **kw):
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        try:
            build = save_argv if mode == "save" else restore_argv
            argv = [*argv_prefix, *build(str(helper), fd, -1, args)]
            exe = argv[0] if argv_prefix else str(helper)
            t = run_helper(exe, mode, args, io_fd=fd, env=env, argv=argv, timeout=120,
                           extra_messages=PRECOPY, **kw)
        finally:
            os.close(fd)
        out.append(t)
        return t

    wr = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    dom = host.create_domain(4, kind="hvm", dirty_pages=64)
    run("save", save_args(dom, 1, CBFLAGS_PRECOPY, 0), tmp / "s", wr)
    target = host.create_empty_domain()
    run("restore", restore_args(target), tmp / "s", os.O_RDONLY)
    assert host.memory_digest(target) == host.memory_digest(dom)
    env["XENSR_SIMHOST_FAULT"] = "log-flood:1:100000,fail-at-page:100"
    run("save", save_args(dom, 0, CBFLAGS_SAVE_PLAIN, 0), tmp / "f", wr)
    return out


def test_valgrind_clean(ours, simulated_host, tmp_path):
    valgrind = shutil.which("valgrind")
    assert valgrind, "valgrind is needed (apt-get install valgrind)"
    prefix = [valgrind, "-q", "--error-exitcode=99", "--leak-check=full",
              "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite"]
    a, b, c = exercise(ours, simulated_host, tmp_path, prefix)
    for t, retval in ((a, 0), (b, 0), (c, -1)):
        assert_completed(t, retval=retval)
        assert valgrind_output(t.stderr) == b"", t.stderr.decode()
    assert a.find("precopy_policy")


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    out = tmp_path_factory.mktemp("asan") / "xensr-save-helper"
    env = dict(os.environ, XENSR_HELPER_ONLY=str(out), XENSR_HELPER_VARIANT="sanitize")
    p = subprocess.run([sys.executable, "setup.py"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return out


def test_asan_ubsan_clean(sanitized, simhost_libs, simulated_host, tmp_path):
    env = dict(simulated_host.env,
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=97",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    a, b, c = exercise(sanitized, simulated_host, tmp_path, env=env)
    for t, retval in ((a, 0), (b, 0), (c, -1)):
        assert_completed(t, retval=retval)
        assert t.stderr == b"", t.stderr.decode()
    assert a.find("precopy_policy")
    longest = max(len(m.raw) for m in c.logs)
    assert longest == C.FRAME_BODY_MAX


def test_sanitized_build_really_is_instrumented(sanitized):
    out = subprocess.run(["readelf", "-d", str(sanitized)], capture_output=True, text=True,
                         check=True).stdout
    assert "libasan" in out and "libubsan" in out
