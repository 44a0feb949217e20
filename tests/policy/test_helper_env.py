"""xensr's helper takes its precopy policy from the environment when a
stock parent (tests/support/parent.py, which knows nothing of it) runs it;
Debian's helper, given the same environment, keeps libxenguest's policy."""

from __future__ import annotations

import errno

import pytest

from tests.support.simhost import XCFLAGS_LIVE, assert_completed, save_to_file
from xensr.api import helper_path

MIB = 8


@pytest.fixture
def xensr_helper():
    return helper_path()


def env_with(host, **values):
    env = dict(host.env)
    env.update({f"XENSR_PRECOPY_{k.upper()}": v for k, v in values.items()})
    return env


def policy_lines(t):
    return [m["formatted"] for m in t.logs if "precopy policy" in m["formatted"]]


def test_stops_anyway_after_max_rounds(xensr_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    env = env_with(host, downtime_limit_ms="1", max_rounds="3")
    t, _ = save_to_file(xensr_helper, host, dom, tmp_path / "s", live=True, env=env)
    assert_completed(t)
    assert host.domain_state(dom)["save_iterations"] == 4     # 3 live + final
    lines = policy_lines(t)
    assert lines[0].startswith("precopy policy from the environment: downtime limit 1 ms")
    assert "no convergence: stop and copy anyway" in lines[-1]


def test_aborts_after_max_rounds(xensr_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    env = env_with(host, downtime_limit_ms="1", max_rounds="2", on_no_convergence="abort")
    t, _ = save_to_file(xensr_helper, host, dom, tmp_path / "s", live=True, env=env)
    assert_completed(t, retval=-1)
    assert t.complete["errnoval"] == errno.ECANCELED
    assert "no convergence: abort" in policy_lines(t)[-1]
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False


def test_stops_within_the_limit(xensr_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=100)
    env = env_with(host, downtime_limit_ms="10000")
    t, _ = save_to_file(xensr_helper, host, dom, tmp_path / "s", live=True, env=env)
    assert_completed(t)
    assert host.domain_state(dom)["save_iterations"] == 4     # all, ~100, ~100, final
    assert policy_lines(t)[-1].endswith("stop and copy (within the limit)")


def test_without_the_environment_the_default_policy(xensr_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    t, _ = save_to_file(xensr_helper, host, dom, tmp_path / "s", live=True)
    assert_completed(t)
    assert host.domain_state(dom)["save_iterations"] == 6
    assert policy_lines(t) == []


def test_debian_helper_ignores_the_environment(debian_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    env = env_with(host, downtime_limit_ms="1", max_rounds="2", on_no_convergence="abort")
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", live=True, env=env)
    assert_completed(t)
    assert host.domain_state(dom)["save_iterations"] == 6     # libxenguest's 5 + final
    assert policy_lines(t) == []


def test_the_parents_answers_take_precedence(simulated_host, tmp_path, caplog):
    """xensr's parent with a precopy_policy callback sets its cbflag: its
    answers decide, the environment's policy is not installed."""
    import xensr

    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    env = env_with(host, downtime_limit_ms="1", max_rounds="2", on_no_convergence="abort")
    asked = []

    def libxc_like(stats):
        asked.append(stats.dirty_count)
        return 1 if 0 <= stats.dirty_count < 50 or stats.iteration >= 5 else 0

    caplog.set_level("INFO", logger="xensr.helper")
    with open(tmp_path / "s", "wb") as f:
        r = xensr.save_domain(dom, f, xensr.Callbacks(precopy_policy=libxc_like),
                              live=True, env=env)
    assert r.precopy_iterations == 5 and len(asked) == 10
    assert host.domain_state(dom)["save_iterations"] == 6
    assert "the toolstack answers precopy_policy" in caplog.text
    assert "policy from the environment" not in caplog.text


@pytest.mark.parametrize("values,needle", [
    ({"downtime_limit_ms": "0"}, "XENSR_PRECOPY_DOWNTIME_LIMIT_MS='0'"),
    ({"downtime_limit_ms": "300ms"}, "XENSR_PRECOPY_DOWNTIME_LIMIT_MS='300ms'"),
    ({"downtime_limit_ms": ""}, "XENSR_PRECOPY_DOWNTIME_LIMIT_MS=''"),
    ({"downtime_limit_ms": "3600001"}, "from 1 to 3600000"),
    ({"downtime_limit_ms": "300", "max_rounds": "-1"}, "XENSR_PRECOPY_MAX_ROUNDS='-1'"),
    ({"downtime_limit_ms": "300", "max_time_ms": "1.5"}, "XENSR_PRECOPY_MAX_TIME_MS='1.5'"),
    ({"downtime_limit_ms": "300", "on_no_convergence": "pause"},
     "must be stop-and-copy or abort"),
    ({"max_rounds": "3"}, "XENSR_PRECOPY_MAX_ROUNDS is set but XENSR_PRECOPY_DOWNTIME_LIMIT_MS"),
])
def test_bad_values_fail_with_a_reason(xensr_helper, simulated_host, tmp_path, values, needle):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=10)
    t, _ = save_to_file(xensr_helper, host, dom, tmp_path / "s", live=True,
                        env=env_with(host, **values))
    assert t.returncode == 255 and t.complete is None, t.summary()
    errors = [m for m in t.logs if m["level"] == 8]
    assert errors and needle in errors[-1]["formatted"], t.summary()
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    assert "save_result" not in state          # libxenguest never ran
