"""Two hosts on one machine: a live migration from one network namespace
to another, `xensr migrate` over ssh (a real sshd in the receiving
namespace) to `xensr migrate-receive`, with each helper on both sides."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

import xensr
from tests.support import netns
from tests.support.fixtures import ROOT
from xensr.testing import SimulatedHost

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture
def helper_path(request, simhost_libs):
    if request.param == "xensr":
        return xensr.helper_path()
    return str(request.getfixturevalue("debian_helper"))


@pytest.mark.parametrize("helper_path", ["xensr", "debian"], indirect=True)
def test_migration_between_namespaces(tmp_path, helper_path, counts):
    src = SimulatedHost(tmp_path / "host-a")
    dst = SimulatedHost(tmp_path / "host-b")
    src.record_destroyed = True
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # `xensr` on the receiving host's PATH: this tree's, run by this Python.
    wrapper = bindir / "xensr"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m xensr \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    try:
        dom = src.create_domain(16, vcpus=2, name="guest", dirty_pages=128)
        with netns.TwoHosts(tmp_path / "net") as net:
            net.start_sshd({
                "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
                "PYTHONPATH": str(ROOT),
                "XENSR_SIMHOST_DIR": str(dst.state_dir),
                "XENSR_SAVE_HELPER": helper_path,
            })
            env = dict(os.environ, XENSR_SIMHOST_DIR=str(src.state_dir), PYTHONPATH=str(ROOT),
                       XENSR_SAVE_HELPER=helper_path)
            p = net.run_a([sys.executable, "-m", "xensr", "migrate", "--json", "-s",
                           net.ssh_command, "--remote-program", "xensr", "guest", net.addr_b],
                          env=env)
            sshd_log = (net.dir / "sshd.log").read_text()
        assert p.returncode == 0, p.stderr + sshd_log
        assert "Accepted publickey for root" in sshd_log
        doc = json.loads(p.stdout)
        assert doc["helper"] == helper_path
        live = [r for r in doc["rounds"] if r["live"]]
        assert len(live) > 1 and live[0]["pages"] == 16 * 256
        assert all(r["pages"] > 0 for r in live[1:])     # the guest dirtied memory
        # The source is gone; the destination runs under the original
        # name, its memory identical to the source's last state.
        assert src.domain_ids() == []
        [gone] = src.destroyed()
        assert gone["state"] == "suspended" and gone["name"] == "guest--migratedaway"
        new = dst.lookup("guest")
        s = dst.domain_state(new)
        assert s["state"] == "running" and s["vcpus"] == 2 and s["logdirty"] is False
        assert dst.memory_digest(new) == gone["memory"]
        assert dst.domain_ids() == [new]
    finally:
        src.close()
        dst.close()


def test_receiver_missing_over_ssh(tmp_path, simhost_libs, counts):
    """The remote program is not there: ssh's command fails before the
    banner; the source is untouched."""
    src = SimulatedHost(tmp_path / "host-a")
    try:
        dom = src.create_domain(4, name="guest")
        digest = src.memory_digest(dom)
        with netns.TwoHosts(tmp_path / "net") as net:
            net.start_sshd({"PATH": "/usr/bin:/bin"})
            env = dict(os.environ, XENSR_SIMHOST_DIR=str(src.state_dir), PYTHONPATH=str(ROOT))
            p = net.run_a([sys.executable, "-m", "xensr", "migrate", "-s", net.ssh_command,
                           "--remote-program", "no-such-xensr", "guest", net.addr_b], env=env)
        assert p.returncode == 1
        assert "banner" in p.stderr and "closed the connection" in p.stderr
        s = src.domain_state(dom)
        assert s["state"] == "running" and not s["logdirty"]
        assert src.memory_digest(dom) == digest
    finally:
        src.close()
