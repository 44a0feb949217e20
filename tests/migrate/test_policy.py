"""Migrations with a precopy policy (xensr.policy.DowntimePolicy): the
policy reaches the save, its decisions reach the result and the JSON
summary, and giving up with "abort" leaves the source running."""

from __future__ import annotations

import errno
import json
import shlex
import socket

import pytest

from xensr.callbacks import PrecopyDecision
from xensr.errors import SaveRestoreError
from xensr.migrate import MigrationError, migrate_domain
from xensr.policy import DowntimePolicy, Round

from .conftest import start_receiver
from .test_cli import run_migrate, two, xensr_cmd  # noqa: F401 (fixture)

MIB = 16
WORKING_SET = 512


def _migrate(hosts, dom, **kw):
    a, b = socket.socketpair()
    rx = start_receiver(hosts, b)
    try:
        try:
            return migrate_domain(hosts.src, dom, a, **hosts.send_kw(), **kw), rx
        finally:
            a.close()
            rx.join()
    except BaseException:
        rx.join()
        raise


def test_policy_stops_within_target(xhosts, counts):
    """A guest dirtying 20000 pages/s over 512 pages: a 5 s limit is
    reachable, the policy stops within it, the result says why."""
    dom = xhosts.src.create_domain(MIB, name="guest", dirty_pages=0, dirty_rate=20000,
                                   working_set=WORKING_SET)
    seen = []
    result, rx = _migrate(xhosts, dom, policy=DowntimePolicy(5.0),
                          progress=lambda rnd, done: seen.append((rnd, done)))
    assert rx.error is None, rx.error
    p = result.save.precopy
    last = p.decisions[-1]
    assert last.decision == PrecopyDecision.STOP_AND_COPY
    assert last.reason.startswith("within the limit")
    assert last.estimate is not None and last.estimate <= 5.0 and last.rate > 0
    # Stopped live: what is left for the suspended round is what the
    # guest dirtied during the last live one, inside its working set.
    assert p.rounds[0].pages == MIB * 256 and p.live_rounds >= 2
    assert 0 < p.pages_after_suspend <= WORKING_SET
    doc = result.to_dict()
    assert [d["reason"] for d in doc["decisions"]] == [d.reason for d in p.decisions]
    assert doc["decisions"][-1]["decision"] == "stop-and-copy"
    assert doc["decisions"][-1]["estimate"] == last.estimate
    assert doc["decisions"][-1]["rate"] == last.rate
    assert doc["decisions"][0]["decision"] == "continue-precopy"
    assert doc["pages_after_suspend"] == p.pages_after_suspend
    assert doc["stream_suspended_seconds"] == p.suspended_time
    assert doc["suspended_seconds"] == result.suspended >= p.suspended_time
    # The progress display is fed from the save's own record of the rounds.
    assert all(isinstance(r, Round) for r, _ in seen)
    assert sorted({r.number for r, _ in seen}) == [r.number for r in p.rounds]
    for r in p.rounds:
        assert max(done for x, done in seen if x.number == r.number) == r.pages
    new = xhosts.dst.lookup("guest")
    assert xhosts.dst.memory_digest(new) == xhosts.src.destroyed()[0]["memory"]


def test_policy_abort_leaves_the_source_running(xhosts, counts):
    """2000 pages per round against a 1 us limit never converges; with
    "abort" the save unwinds before any suspend: the source keeps running
    with log-dirty off, the receiver destroys its copy, both raise."""
    dom = xhosts.src.create_domain(MIB, name="guest", dirty_pages=2000)
    policy = DowntimePolicy(1e-6, max_rounds=3, on_no_convergence="abort")
    a, b = socket.socketpair()
    rx = start_receiver(xhosts, b)
    try:
        with pytest.raises(MigrationError) as ei:
            migrate_domain(xhosts.src, dom, a, policy=policy, **xhosts.send_kw())
    finally:
        a.close()
        rx.join()
    e = ei.value
    assert e.side == "sender" and e.stage == "stream" and e.source == "untouched"
    assert "the precopy policy aborted the save (no convergence after 3 live rounds" in str(e)
    assert isinstance(e.__cause__, SaveRestoreError)
    assert e.__cause__.errno == errno.ECANCELED
    state = xhosts.src.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    assert state["name"] == "guest"
    assert isinstance(rx.error, MigrationError)
    assert rx.error.side == "receiver" and rx.error.stage == "stream"
    assert rx.error.destination == "destroyed"
    assert xhosts.dst.domain_ids() == []


def _receiver(dst) -> str:
    return f"XENSR_SIMHOST_DIR={shlex.quote(str(dst.state_dir))} {xensr_cmd()} migrate-receive"


def test_cli_policy_flags_reach_the_save(two, counts):
    """--downtime-limit, --max-rounds and --on-no-convergence decide the
    save: an unreachable limit gives up after 2 live rounds (libxenguest's
    own policy would send 5, and decide nothing)."""
    src, dst = two
    src.create_domain(MIB, name="guest", dirty_pages=2000)
    p = run_migrate(src.state_dir, ["--json", "--downtime-limit", "0.001", "--max-rounds", "2",
                                    "--on-no-convergence", "stop-and-copy", "-s", "", "guest",
                                    _receiver(dst)])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [r["live"] for r in doc["rounds"]] == [True, True, False]
    last = doc["decisions"][-1]
    assert last["decision"] == "stop-and-copy"
    assert last["reason"] == "no convergence after 2 live rounds: stop and copy anyway"
    assert all(set(d) >= {"rate", "estimate", "decision", "reason"} for d in doc["decisions"])
    assert doc["pages_after_suspend"] == doc["rounds"][-1]["pages"] > 0
    assert doc["stream_suspended_seconds"] <= doc["suspended_seconds"]
    assert dst.domain_state(dst.lookup("guest"))["state"] == "running"
    assert "s after the end of the stream)" in p.stderr     # the receiver's part


def test_cli_max_time_reaches_the_save(two, counts):
    src, dst = two
    src.create_domain(MIB, name="guest", dirty_pages=2000)
    p = run_migrate(src.state_dir, ["--json", "--max-time", "0.000001", "-s", "", "guest",
                                    _receiver(dst)])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert "s of precopy" in doc["decisions"][-1]["reason"]


def test_cli_policy_abort(two, counts):
    src, dst = two
    dom = src.create_domain(MIB, name="guest", dirty_pages=2000)
    p = run_migrate(src.state_dir, ["--downtime-limit", "0.001", "--max-rounds", "2",
                                    "--on-no-convergence", "abort", "-s", "", "guest",
                                    _receiver(dst)])
    assert p.returncode == 1
    assert "migrate: migration sender, stream: the precopy policy aborted the save" in p.stderr
    assert "migrate-receive: migration receiver, stream:" in p.stderr
    assert "Traceback" not in p.stderr
    state = src.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    assert dst.domain_ids() == []


def test_cli_rejects_a_bad_policy_option(two):
    src, dst = two
    p = run_migrate(src.state_dir, ["--downtime-limit", "-3", "-s", "", "guest", "true"])
    assert p.returncode == 2 and "--downtime-limit" in p.stderr
