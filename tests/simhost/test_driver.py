"""The simulated host called directly from C (tests/simhost/driver.c): the
precopy_policy callback, which no libxl helper installs, and a NULL logger."""

from __future__ import annotations

import errno
import re
import subprocess

import pytest

from tests.support import stream as st


def drive(driver, host, *args, timeout=30):
    p = subprocess.run([str(driver), *map(str, args)], env=host.env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines(), p.stderr


def policy_calls(lines):
    out = []
    for line in lines:
        m = re.fullmatch(r"policy (\d+) (\d+) (-?\d+) -> (-?\d+)", line)
        if m:
            out.append(tuple(int(g) for g in m.groups()))
    return out


def result(lines):
    (m,) = [re.fullmatch(r"rc (-?\d+) errno (\d+)", line) for line in lines
            if line.startswith("rc ")]
    return int(m.group(1)), int(m.group(2))


def test_policy_stats_no_dirtying(driver, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(1, kind="pv", dirty_pages=0)
    lines, _ = drive(driver, host, "save", dom, 1, tmp_path / "s", "simple")
    assert result(lines) == (0, 0)
    # Before the first round, after it (dirty count unknown), after the
    # log-dirty scan found nothing: stop.
    assert policy_calls(lines) == [(0, 0, 256, 0), (1, 256, -1, 0), (1, 256, 0, 1)]
    assert host.domain_state(dom)["save_iterations"] == 2


def test_policy_stats_sequence(driver, simulated_host, tmp_path):
    """Stats by value, as libxenguest passes them: iteration, the running
    total of pages written, the dirty count (-1 right after a round)."""
    host = simulated_host
    dom = host.create_domain(1, kind="hvm", dirty_pages=300)
    lines, _ = drive(driver, host, "save", dom, 1, tmp_path / "s", "simple")
    assert result(lines) == (0, 0)
    calls = policy_calls(lines)
    assert len(calls) == 10
    total = 0
    for k in range(5):
        before, after = calls[2 * k], calls[2 * k + 1]
        assert before[0] == k and before[1] == total and before[3] == 0
        assert before[2] == 256 if k == 0 else 50 <= before[2] <= 256
        total += before[2]
        assert after == (k + 1, total, -1, 0 if k < 4 else 1)
    s = st.parse((tmp_path / "s").read_bytes())
    sent = sum(len(st.check_page_data(r)) for r in s.of("PAGE_DATA"))
    assert host.domain_state(dom)["save_pages"] == sent
    assert sent > total                      # plus the final, suspended round
    assert lines.index("callback suspend") > max(
        i for i, line in enumerate(lines) if line.startswith("policy "))


def test_policy_decides(driver, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(1, kind="pv", dirty_pages=300)
    lines, _ = drive(driver, host, "save", dom, 1, tmp_path / "s", "continue-until:2")
    assert result(lines) == (0, 0)
    assert [c[0] for c in policy_calls(lines)] == [0, 1, 1, 2]
    assert host.domain_state(dom)["save_iterations"] == 3

    host.unpause(dom)
    lines, _ = drive(driver, host, "save", dom, 1, tmp_path / "s", "stop")
    assert policy_calls(lines) == [(0, 0, 256, 1)]
    assert host.domain_state(dom)["save_iterations"] == 2   # the first round still goes


def test_policy_abort(driver, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(1, kind="hvm")
    lines, _ = drive(driver, host, "save", dom, 1, tmp_path / "s", "abort-at:1")
    assert result(lines) == (-1, errno.ECANCELED)
    assert "log 8 -1 xc: Abort precopy loop (125 = Operation canceled): Internal error" in lines
    assert "callback suspend" not in lines
    assert lines.count("callback switch_qemu_logdirty %d 0" % dom) == 1
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    s = st.parse((tmp_path / "s").read_bytes(), allow_eof_without_end=True)
    assert not s.of("PAGE_DATA")


def test_hang_at_precopy_policy(driver, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(1, kind="pv")
    host.set_fault("hang-at:precopy_policy")
    with pytest.raises(subprocess.TimeoutExpired):
        drive(driver, host, "save", dom, 1, tmp_path / "s", "simple", timeout=1.5)
    # Without an installed policy callback the point is never reached.
    host.update_domain(dom, state="running")
    lines, _ = drive(driver, host, "save", dom, 1, tmp_path / "s", "none")
    assert result(lines) == (0, 0)


def test_open_with_null_logger(driver, simulated_host):
    lines, _ = drive(driver, simulated_host, "open-null")
    assert lines == ["open ok errno 0", "close 0", "close-null 0"]
    env = dict(simulated_host.env)
    del env["XENSR_SIMHOST_DIR"]
    p = subprocess.run([str(driver), "open-null"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert p.stdout.splitlines()[0] == "open failed errno 2"
    assert "xencall: error: Could not obtain handle on privileged command interface" in p.stderr
