"""xensr migrate and xensr migrate-receive, as processes, through xl's
``-s ''`` form (HOST is the whole receiver command)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.support.fixtures import ROOT
from xensr.testing import SimulatedHost


def xensr_cmd() -> str:
    return f"{shlex.quote(sys.executable)} -m xensr"


def run_migrate(src_dir, args, timeout=120):
    env = dict(os.environ, XENSR_SIMHOST_DIR=str(src_dir), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "xensr", "migrate", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def two(tmp_path, simhost_libs):
    src = SimulatedHost(tmp_path / "a")
    dst = SimulatedHost(tmp_path / "b")
    src.record_destroyed = True
    yield src, dst
    src.close()
    dst.close()


def test_cli_migration(two, counts):
    src, dst = two
    src.create_domain(8, name="guest", dirty_pages=64)
    receiver = f"XENSR_SIMHOST_DIR={shlex.quote(str(dst.state_dir))} {xensr_cmd()} -v -t -T migrate-receive -e -d"
    p = run_migrate(src.state_dir, ["--json", "-s", "", "guest", receiver])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["name"] == "guest" and doc["rounds"][0]["pages"] == 2048
    # PAGE_DATA records: 4096 bytes and a pfn per page, a header per batch of 1024.
    assert doc["rounds"][0]["bytes"] == 2048 * (4096 + 8) + 2 * 16
    assert doc["rounds"][-1]["live"] is False
    assert doc["bytes"] == sum(r["bytes"] for r in doc["rounds"])
    assert doc["pages_after_suspend"] == doc["rounds"][-1]["pages"] > 0
    assert doc["decisions"] == []           # libxenguest's own policy
    assert doc["stream_suspended_seconds"] <= doc["suspended_seconds"] <= doc["total_seconds"]
    assert "configuration received" in p.stderr      # -d on the receiver
    new = dst.lookup("guest")
    assert dst.domain_state(new)["state"] == "running"
    assert src.domain_ids() == []
    assert dst.memory_digest(new) == src.destroyed()[0]["memory"]


def test_cli_to_file_then_restore(two, tmp_path, counts):
    import xensr
    from xensr.xlfile import restore_domain_from_file

    src, dst = two
    src.create_domain(4, name="guest", dirty_pages=8)
    path = tmp_path / "guest.save"
    p = run_migrate(src.state_dir, ["-s", "", "guest",
                                    f"{xensr_cmd()} migrate-receive --to-file {shlex.quote(str(path))}"])
    assert p.returncode == 0, p.stderr
    target = dst.create_empty_domain()
    restore_domain_from_file(target, path, store_evtchn=1, console_evtchn=2, env=dst.env)
    assert dst.memory_digest(target) == src.destroyed()[0]["memory"]


def test_cli_no_such_domain(two):
    src, _ = two
    p = run_migrate(src.state_dir, ["-s", "", "nosuch", "true"])
    assert p.returncode == 1 and "no domain named 'nosuch'" in p.stderr


def test_cli_paused_receiver(two, counts):
    src, dst = two
    src.create_domain(4, name="guest")
    receiver = f"XENSR_SIMHOST_DIR={shlex.quote(str(dst.state_dir))} {xensr_cmd()} migrate-receive -p"
    p = run_migrate(src.state_dir, ["-s", "", "guest", receiver])
    assert p.returncode == 0, p.stderr
    assert dst.domain_state(dst.lookup("guest"))["state"] == "paused"
