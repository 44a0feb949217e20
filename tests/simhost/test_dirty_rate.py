"""The simulated guest's dirtying in time: dirty_rate pages per second of
wall time over its working set (simhost/README.md, "Saves")."""

from __future__ import annotations

import pytest

from tests.support import stream as st
from tests.support.simhost import assert_completed, restore_from_file, save_to_file

MIB = 8
WS = 300


def test_meta_keys(simulated_host):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_rate=5000, working_set=WS)
    state = host.domain_state(dom)
    assert (state["dirty_rate"], state["dirty_working_set"]) == (5000, WS)
    whole = host.create_domain(MIB, dirty_rate=7)
    assert host.domain_state(whole)["dirty_working_set"] == 0      # all
    idle = host.domain_state(host.create_domain(MIB))
    assert (idle["dirty_rate"], idle["dirty_working_set"]) == (0, 0)


@pytest.mark.parametrize("kw", [{"dirty_rate": -1}, {"dirty_rate": 1, "working_set": 0},
                                {"dirty_rate": 1, "working_set": MIB * 256 + 1}])
def test_bad_values_refused(simulated_host, kw):
    with pytest.raises(ValueError):
        simulated_host.create_domain(MIB, **kw)


def test_idle_guest_dirties_nothing(debian_helper, simulated_host, tmp_path):
    host = simulated_host
    dom = host.create_domain(MIB, dirty_pages=0)
    t, _ = save_to_file(debian_helper, host, dom, tmp_path / "s", live=True)
    assert_completed(t)
    assert host.domain_state(dom)["save_iterations"] == 2      # all, then nothing


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_dirties_its_working_set_while_rounds_take_time(debian_helper, simulated_host,
                                                        tmp_path, kind):
    """A slow transport (a stall before each batch) gives the guest time:
    the later rounds resend pages of its working set only, and the target
    ends identical."""
    host = simulated_host
    dom = host.create_domain(MIB, kind=kind, dirty_pages=0, dirty_rate=1_000_000,
                             working_set=WS)
    env = dict(host.env, XENSR_SIMHOST_FAULT="stall:20@save")
    t, data = save_to_file(debian_helper, host, dom, tmp_path / "s", live=True, env=env)
    assert_completed(t)
    s = st.parse(data)
    batches = s.page_batches()
    first = MIB * 256
    later = [pfn for b in batches for pfn in b][first:]
    assert later and max(later) < WS
    # 20 ms per batch at a million pages a second: the set is all dirty
    # every round, so libxenguest's policy runs its 5 rounds.
    assert host.domain_state(dom)["save_iterations"] == 6
    target = host.create_empty_domain()
    tr = restore_from_file(debian_helper, host, target, tmp_path / "s")
    assert_completed(tr)
    assert host.memory_digest(target) == host.memory_digest(dom)
