"""Who suspends a guest during a save: the toolstack, as on real Xen, unless
the host opts in to guests suspending by themselves (auto_suspend)."""

from __future__ import annotations

import os

import pytest

import xensr
from xensr import xlfile
from xensr.testing import SimulatedHost


@pytest.fixture
def host(tmp_path, simhost_libs):
    with SimulatedHost(tmp_path / "host") as h:
        yield h


class Answers:
    """A toolstack's suspend callback that answers yes without suspending."""

    def suspend(self):
        return True


@pytest.mark.parametrize("live", [False, True])
@pytest.mark.parametrize("callbacks", [None, Answers()], ids=["no suspend method", "answers only"])
def test_a_save_whose_guest_nothing_suspended_fails(host, tmp_path, live, callbacks):
    dom = host.create_domain(4, kind="pv")
    target = tmp_path / "g.xl"
    with pytest.raises(xensr.SaveRestoreError) as ei:
        xlfile.save_domain_to_file(dom, target, callbacks, live=live, env=host.env)
    log = "\n".join(ei.value.log_tail)
    assert "Domain has not been suspended" in log and "auto_suspend" in log
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    assert not target.exists()


@pytest.mark.parametrize("live", [False, True])
def test_a_toolstack_that_suspends_its_guest_saves_it(host, tmp_path, live):
    dom = host.create_domain(4, kind="hvm", dirty_pages=16)
    asked = []

    class Toolstack:
        def suspend(self):
            asked.append(host.domain_state(dom)["state"])
            host.suspend(dom)
            return True

    res = xlfile.save_domain_to_file(dom, tmp_path / "g.xl", Toolstack(), live=live, env=host.env)
    assert res.retval == 0 and asked == ["running"]
    assert host.domain_state(dom)["state"] == "suspended"
    dst = host.create_empty_domain()
    xlfile.restore_domain_from_file(dst, tmp_path / "g.xl", store_evtchn=1, console_evtchn=2,
                                    env=host.env)
    assert host.memory_digest(dst) == host.memory_digest(dom)


def test_auto_suspend_is_an_explicit_opt_in(tmp_path, simhost_libs, monkeypatch):
    monkeypatch.setenv("XENSR_SIMHOST_AUTO_SUSPEND", "1")  # inherited: not this host's
    with SimulatedHost(tmp_path / "a") as plain, \
            SimulatedHost(tmp_path / "b", auto_suspend=True) as auto:
        assert "XENSR_SIMHOST_AUTO_SUSPEND" not in plain.env
        assert auto.env["XENSR_SIMHOST_AUTO_SUSPEND"] == "1"
        for h, ok in ((plain, False), (auto, True)):
            dom = h.create_domain(4, kind="pv")
            path = tmp_path / f"{ok}.xl"
            if ok:
                xlfile.save_domain_to_file(dom, path, env=h.env)
                assert h.domain_state(dom)["state"] == "suspended"
            else:
                with pytest.raises(xensr.SaveRestoreError):
                    xlfile.save_domain_to_file(dom, path, env=h.env)
                assert h.domain_state(dom)["state"] == "running"
            assert path.exists() == ok


def test_auto_suspend_still_honours_a_guest_that_ignores_requests(tmp_path, simhost_libs):
    with SimulatedHost(tmp_path / "h", auto_suspend=True) as h:
        dom = h.create_domain(4, kind="pv", ignore_suspend=True)
        with pytest.raises(xensr.SaveRestoreError) as ei:
            xlfile.save_domain_to_file(dom, tmp_path / "g.xl", env=h.env)
        log = "\n".join(ei.value.log_tail)
        assert "Domain has not been suspended" in log and "auto_suspend" not in log
        assert not os.path.exists(tmp_path / "g.xl")
