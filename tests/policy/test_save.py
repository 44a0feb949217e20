"""DowntimePolicy on the simulated host through the Python API, and the
precopy report every save result carries."""

from __future__ import annotations

import asyncio
import errno

import pytest

import xensr
import xensr.aio
from xensr.callbacks import PrecopyDecision
from xensr.errors import SaveRestoreError
from xensr.policy import DowntimePolicy
from tests.support import stream as st

MIB = 16


def save(host, dom, path, **kw):
    with open(path, "wb") as f:
        return xensr.save_domain(dom, f, live=True, env=host.env, **kw)


def restore_and_compare(host, dom, path):
    target = host.create_empty_domain()
    with open(path, "rb") as f:
        xensr.restore_domain(target, f, store_evtchn=1, console_evtchn=2, env=host.env)
    assert host.memory_digest(target) == host.memory_digest(dom)


def test_stops_within_the_limit_where_it_can(simulated_host, tmp_path):
    """100 pages per round against a 10 s limit: reachable at any speed.
    The policy goes on while the count shrinks, then stops within it."""
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=100)
    r = save(host, dom, tmp_path / "s", policy=DowntimePolicy(10.0))
    last = r.precopy.decisions[-1]
    assert last.decision == PrecopyDecision.STOP_AND_COPY
    assert last.reason == "within the limit"
    assert last.estimate is not None and last.estimate <= 10.0
    assert r.precopy.live_rounds == 3          # all, ~100 (shrunk), ~100: stop
    assert r.precopy.pages_after_suspend == r.precopy.rounds[-1].pages > 0
    assert r.precopy.suspended_time is not None and r.precopy.suspended_time >= 0
    assert host.domain_state(dom)["save_iterations"] == len(r.precopy.rounds)
    restore_and_compare(host, dom, tmp_path / "s")


def test_time_based_guest_converges_and_restores(simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=0, dirty_rate=20000, working_set=512)
    r = save(host, dom, tmp_path / "s", policy=DowntimePolicy(5.0))
    assert r.precopy.decisions[-1].decision == PrecopyDecision.STOP_AND_COPY
    assert r.precopy.decisions[-1].reason.startswith("within the limit")
    restore_and_compare(host, dom, tmp_path / "s")


def test_aborts_where_it_cannot_and_leaves_the_guest_running(simulated_host, tmp_path):
    """2000 pages per round against a 1 us limit: never within it."""
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    with pytest.raises(SaveRestoreError) as ei:
        save(host, dom, tmp_path / "s",
             policy=DowntimePolicy(1e-6, max_rounds=3, on_no_convergence="abort"))
    assert ei.value.errno == errno.ECANCELED
    state = host.domain_state(dom)
    assert state["state"] == "running" and state["logdirty"] is False
    assert state["save_result"] == "failed"


def test_stops_anyway_where_it_cannot_when_told(simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    r = save(host, dom, tmp_path / "s", policy=DowntimePolicy(1e-6, max_rounds=3))
    last = r.precopy.decisions[-1]
    assert last.reason == "no convergence after 3 live rounds: stop and copy anyway"
    assert [x.suspended for x in r.precopy.rounds] == [False] * 3 + [True]
    assert host.domain_state(dom)["logdirty"] is False
    restore_and_compare(host, dom, tmp_path / "s")


def test_default_policy_result_has_rounds_but_no_decisions(simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=300)
    r = save(host, dom, tmp_path / "s")
    p = r.precopy
    assert p.decisions == () and p.live_rounds == 5 and len(p.rounds) == 6
    assert p.rounds[0].pages == MIB * 256
    assert p.bytes == sum(x.bytes for x in p.rounds)
    assert p.pages_after_suspend == p.rounds[-1].pages


def test_non_live_save_is_one_suspended_round(simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB)
    with open(tmp_path / "s", "wb") as f:
        r = xensr.save_domain(dom, f, env=host.env)
    assert [(x.pages, x.suspended) for x in r.precopy.rounds] == [(MIB * 256, True)]
    assert r.precopy.pages_after_suspend == MIB * 256


def test_report_matches_the_stream(simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=300)
    r = save(host, dom, tmp_path / "s", policy=DowntimePolicy(1e-6, max_rounds=4))
    s = st.parse((tmp_path / "s").read_bytes())
    pages = sum(len(b) for b in s.page_batches())
    assert r.precopy.pages == pages
    assert r.precopy.bytes == sum(8 + len(rec.body) for rec in s.of("PAGE_DATA"))


def test_progress_callback_still_called(simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=10)
    seen = []
    cb = xensr.Callbacks(progress=lambda *a: seen.append(a[1]))
    with open(tmp_path / "s", "wb") as f:
        r = xensr.save_domain(dom, f, cb, live=True, env=host.env, policy=DowntimePolicy())
    assert "Domain now suspended" in seen and r.precopy.suspended_time is not None


def test_policy_as_the_callbacks_object(simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=100)
    policy = DowntimePolicy(10.0)
    with open(tmp_path / "s", "wb") as f:
        r = xensr.save_domain(dom, f, policy, live=True, env=host.env)
    assert r.precopy.decisions == tuple(policy.decisions) and policy.decisions


def test_policy_option_and_callback_refused_together(simulated_host, tmp_path):
    cb = xensr.Callbacks(precopy_policy=lambda s: 0)
    with open(tmp_path / "s", "wb") as f, pytest.raises(ValueError):
        xensr.save_domain(1, f, cb, live=True, policy=DowntimePolicy())
    with open(tmp_path / "s", "wb") as f, pytest.raises(TypeError):
        xensr.save_domain(1, f, live=True, policy=object())


def test_aio_many_saves_share_one_policy(simulated_host, tmp_path):
    host = simulated_host
    doms = [host.create_domain(4, dirty_pages=2000) for _ in range(3)]
    policy = DowntimePolicy(1e-6, max_rounds=2)

    async def main():
        files = [open(tmp_path / f"s{i}", "wb") for i in range(len(doms))]
        try:
            return await asyncio.gather(*(
                xensr.aio.save_domain(d, f, live=True, env=host.env, policy=policy)
                for d, f in zip(doms, files)))
        finally:
            for f in files:
                f.close()

    results = asyncio.run(main())
    for r in results:
        assert r.precopy.live_rounds == 2
        assert r.precopy.decisions[-1].reason.startswith("no convergence after 2")
    assert policy.decisions == []             # each save used its own copy


def test_debian_helper_keeps_its_policy_and_xensr_warns(debian_helper, simulated_host,
                                                        tmp_path, caplog):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=2000)
    caplog.set_level("WARNING", logger="xensr")
    r = save(host, dom, tmp_path / "s", helper=str(debian_helper),
             policy=DowntimePolicy(1e-6, max_rounds=2, on_no_convergence="abort"))
    assert "is not xensr's: precopy_policy will not be called" in caplog.text
    assert r.precopy.decisions == () and r.precopy.live_rounds == 5


@pytest.mark.parametrize("dirty,limit,rounds,onc", [
    (100, 10.0, 30, "stop-and-copy"), (4000, 1e-3, 3, "stop-and-copy"),
    (4000, 1e-3, 4, "abort"), (0, 0.3, 30, "abort"), (30, 10.0, 30, "abort"),
])
def test_the_helpers_policy_decides_as_the_python_one(simulated_host, tmp_path, dirty, limit,
                                                      rounds, onc):
    """Per-round workloads (no timing in the counts) with limits far from
    the estimates: the same rounds and outcome from the helper's
    environment (a parent without the extension) as from DowntimePolicy."""
    from tests.support.simhost import save_to_file
    from xensr.api import helper_path

    host = simulated_host
    policy = DowntimePolicy(limit, max_rounds=rounds, on_no_convergence=onc)
    a = host.create_domain(MIB, dirty_pages=dirty, seed=5)
    try:
        save(host, a, tmp_path / "a", policy=policy)
    except SaveRestoreError:
        pass
    b = host.create_domain(MIB, dirty_pages=dirty, seed=5)
    env = dict(host.env, **policy.environ())
    save_to_file(helper_path(), host, b, tmp_path / "b", live=True, env=env)
    sa, sb = host.domain_state(a), host.domain_state(b)
    assert (sa["save_iterations"], sa["save_result"]) == \
        (sb["save_iterations"], sb["save_result"])
