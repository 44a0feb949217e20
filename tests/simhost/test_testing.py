"""xensr.testing: SimulatedHost and its fixture, without any helper."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import xensr.testing
from xensr.testing import PAGE_SIZE, SimulatedHost, parse_fault_spec, simhost_lib_dir


def test_context_manager_owns_a_temporary_directory():
    with SimulatedHost() as host:
        d = host.state_dir
        assert d.is_dir()
        host.create_domain(1)
    assert not d.exists()


def test_given_directory_is_kept(tmp_path):
    with SimulatedHost(tmp_path / "s") as host:
        dom = host.create_domain(1)
    assert (tmp_path / "s" / f"dom{dom}" / "meta").is_file()


def test_fixture(simulated_host):
    assert isinstance(simulated_host, SimulatedHost)
    assert simulated_host.domain_ids() == []


def test_env(simulated_host, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    monkeypatch.setenv("XENSR_SIMHOST_FAULT", "exit-early")
    monkeypatch.setenv("XENSR_SIM_FAULT", "exit-early")
    monkeypatch.setenv("XENSR_SIM_DIR", "/elsewhere")
    env = simulated_host.env
    assert env["LD_LIBRARY_PATH"] == f"{simhost_lib_dir()}:/opt/x"
    assert env["XENSR_SIMHOST_DIR"] == str(simulated_host.state_dir)
    # Inherited specs and the old names are dropped.
    assert not {"XENSR_SIMHOST_FAULT", "XENSR_SIM_FAULT", "XENSR_SIM_DIR"} & set(env)
    assert env["PATH"] == os.environ["PATH"]
    simulated_host.set_fault("stall:5,fail-at-page:3:ENOSPC@save")
    assert simulated_host.env["XENSR_SIMHOST_FAULT"] == "stall:5,fail-at-page:3:ENOSPC@save"
    simulated_host.add_fault("exit-early@restore")
    assert simulated_host.fault_spec.endswith(",exit-early@restore")
    simulated_host.clear_faults()
    assert "XENSR_SIMHOST_FAULT" not in simulated_host.env
    assert simhost_lib_dir() == Path(__file__).resolve().parents[2] / "xensr" / "_simhost"
    assert simulated_host.lib_dir == simhost_lib_dir()


def test_old_public_names_are_aliases(simulated_host):
    """rig_dir, rig_available and SimulatedHost.rig_dir, the names before
    this release, still work."""
    assert xensr.testing.rig_dir is xensr.testing.simhost_lib_dir
    assert xensr.testing.rig_available is xensr.testing.simhost_available
    assert xensr.testing.rig_available() is True
    assert simulated_host.rig_dir == simulated_host.lib_dir
    assert {"rig_dir", "rig_available"} <= set(xensr.testing.__all__)


def test_pv_domain_layout(simulated_host):
    host = simulated_host
    dom = host.create_domain(4, vcpus=3, kind="pv", dirty_pages=7, seed=99)
    s = host.domain_state(dom)
    nr = 4 * 256
    assert s["domid"] == dom and s["kind"] == "pv" and s["vcpus"] == 3
    assert s["nr_pages"] == nr and s["memory_mib"] == 4
    assert s["state"] == "running" and s["logdirty"] is False
    assert (s["console_gfn"], s["store_gfn"], s["start_info_pfn"]) == (nr - 1, nr - 2, nr - 3)
    assert s["p2m_pfn"] == nr - 3 - 2
    assert (s["dirty_pages"], s["seed"]) == (7, 99)
    assert os.path.getsize(host.memory_path(dom)) == nr * PAGE_SIZE
    si = host.read_pages(dom, s["start_info_pfn"])
    assert si.startswith(b"xen-3.0-x86_64\0")
    assert struct.unpack_from("<Q", si, 32)[0] == nr
    assert struct.unpack_from("<QI", si, 56) == (nr - 2, 1)
    assert struct.unpack_from("<QI", si, 72) == (nr - 1, 2)
    p2m = host.read_pages(dom, s["p2m_pfn"], 2)
    assert struct.unpack("<1024Q", p2m) == tuple(range(1024))


def test_memory_is_deterministic_per_seed(simulated_host):
    host = simulated_host
    a = host.create_domain(2, kind="hvm", seed=5)
    b = host.create_domain(2, kind="hvm", seed=5)
    c = host.create_domain(2, kind="hvm", seed=6)
    d = host.create_domain(2, kind="hvm")
    e = host.create_domain(2, kind="hvm")
    assert host.memory_digest(a) == host.memory_digest(b) != host.memory_digest(c)
    assert host.memory_digest(d) != host.memory_digest(e)   # default seeds differ
    data = host.memory_path(a).read_bytes()
    assert host.memory_digest(a) == hashlib.sha256(data).hexdigest()
    assert len(set(data[i:i + 64] for i in range(0, len(data), PAGE_SIZE))) == 512


def test_empty_domain(simulated_host):
    host = simulated_host
    dom = host.create_empty_domain()
    s = host.domain_state(dom)
    assert s["kind"] is None and s["vcpus"] == 0 and s["nr_pages"] == 0
    assert s["state"] == "paused" and s["max_pages"] == 16 * 1024 * 256
    typed = host.domain_state(host.create_empty_domain(kind="hvm", vcpus=2, max_mib=8))
    assert (typed["kind"], typed["vcpus"], typed["max_pages"]) == ("hvm", 2, 8 * 256)
    assert host.memory_digest(dom) == hashlib.sha256(b"").hexdigest()


def test_update_pause_destroy(simulated_host):
    host = simulated_host
    dom = host.create_domain(1)
    host.pause(dom)
    assert host.domain_state(dom)["state"] == "paused"
    host.unpause(dom)
    host.update_domain(dom, dirty_pages=3, ignore_suspend=True)
    s = host.domain_state(dom)
    assert s["state"] == "running" and s["dirty_pages"] == 3 and s["ignore_suspend"] is True
    with pytest.raises(ValueError):
        host.update_domain(dom, state="flying")
    with pytest.raises(ValueError):
        host.update_domain(dom, note="a\nb")
    host.destroy_domain(dom)
    assert dom not in host.domain_ids()
    with pytest.raises(LookupError):
        host.domain_state(dom)


def test_pages_read_write(simulated_host):
    host = simulated_host
    dom = host.create_domain(1)
    page = bytes(range(256)) * 16
    host.write_pages(dom, 3, page)
    assert host.read_pages(dom, 3) == page
    with pytest.raises(ValueError):
        host.write_pages(dom, 255, page * 2)
    with pytest.raises(ValueError):
        host.write_pages(dom, 0, b"x")
    with pytest.raises(ValueError):
        host.read_pages(dom, 256)


@pytest.mark.parametrize("call,exc", [
    (lambda h: h.create_domain(0), ValueError),
    (lambda h: h.create_domain(1.5), TypeError),
    (lambda h: h.create_domain(True), TypeError),
    (lambda h: h.create_domain(1, vcpus=0), ValueError),
    (lambda h: h.create_domain(1, kind="arm"), ValueError),
    (lambda h: h.create_domain(1, dirty_pages=-1), ValueError),
    (lambda h: h.create_domain(1, state="gone"), ValueError),
    (lambda h: h.create_empty_domain(kind="pvh"), ValueError),
    (lambda h: h.domain_state(12345), LookupError),
    (lambda h: h.domain_state("1"), TypeError),
    (lambda h: h.set_fault("explode"), ValueError),
])
def test_bad_arguments(simulated_host, call, exc):
    with pytest.raises(exc):
        call(simulated_host)


@pytest.mark.parametrize("spec", [
    "open-fail@save", "open-fail:1:2", "fail-at-page", "fail-at-page:x", "fail-at-page:1:EWHAT",
    "signal-at-page:1", "signal-at-page:1:SIGWHAT", "hang-at:nowhere", "hang-at:page",
    "stall", "log-flood:1:0", "truncate-stream:5@restore", "garbage-control",
    "exit-early:1", "stall:1@both", "a" * 3,
])
def test_parse_fault_spec_rejects(spec):
    with pytest.raises(ValueError):
        parse_fault_spec(spec)


def test_parse_fault_spec_accepts():
    got = parse_fault_spec("open-fail,fail-at-page:10:ENOSPC@save,signal-at-page:3:SEGV,"
                           "hang-at:page:7@restore,hang-at:suspend,stall:5,log-flood:2,"
                           "truncate-stream:99@save,garbage-control:8,exit-early")
    assert got[0] == ("open-fail", (errno.ENOENT,), None)
    assert got[1] == ("fail-at-page", (10, errno.ENOSPC), "save")
    assert got[2] == ("signal-at-page", (3, 11), None)
    assert got[3] == ("hang-at", ("page", 7), "restore")
    assert got[6] == ("log-flood", (2, 80), None)
    assert len(got) == 10


def _create_many(args):
    state_dir, n = args
    host = SimulatedHost(state_dir)
    return [host.create_domain(1, kind="hvm") for _ in range(n)]


def test_domid_allocation_is_safe_across_processes(tmp_path):
    """Concurrent creators in separate processes never share a domid."""
    state = tmp_path / "sim"
    state.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.map(_create_many, [(str(state), 6)] * 8)
    ids = [d for r in results for d in r]
    assert len(ids) == 48 and len(set(ids)) == 48
    host = SimulatedHost(state)
    assert host.domain_ids() == sorted(ids)
    for dom in ids:
        assert host.domain_state(dom)["domid"] == dom
    assert not [p for p in state.iterdir() if p.name.startswith(".new-")]


def test_no_extension_import():
    """xensr.testing is pure Python: importing it does not load xensr._xc."""
    code = ("import sys, xensr.testing; print('xensr._xc' in sys.modules, "
            "'pytest' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.split() == ["False", "False"]      # nor pytest, until the fixture is used
