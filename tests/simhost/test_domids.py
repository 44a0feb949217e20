"""SimulatedHost domid allocation: after the last one, wrapping, shared dirs."""

from __future__ import annotations

from xensr.testing import SimulatedHost


def test_domids_follow_the_last_allocated_and_skip_taken_ones(tmp_path):
    with SimulatedHost(tmp_path / "s") as a, SimulatedHost(tmp_path / "s") as b:
        d1 = a.create_domain(1)
        d2 = a.create_domain(1)
        assert (d1, d2) == (1, 2)
        # b starts from 1: the renames tell it 1 and 2 are taken.
        d3 = b.create_domain(1)
        assert d3 == 3
        # a's next try (3) is b's: it moves on to 4.
        d4 = a.create_empty_domain()
        assert d4 == 4
        # A destroyed domid is not reused at once (as Xen).
        a.destroy_domain(d1)
        assert a.create_domain(1) == 5
        assert sorted(a.domain_ids()) == [2, 3, 4, 5]
        for d in (2, 3, 4, 5):
            assert a.read_meta(d)["domid"] == str(d)


def test_domids_wrap_round_below_the_reserved_range(tmp_path):
    with SimulatedHost(tmp_path / "s") as host:
        assert host.create_domain(1) == 1
        assert host.create_domain(1) == 2
        host._last_domid = 0x7fee
        assert host.create_domain(1) == 0x7fef     # the last valid domid
        # Past it: back to 1, whose directory exists, then 3.
        assert host.create_domain(1) == 3
        assert host.read_meta(3)["domid"] == "3"
        assert not any(p.name.startswith(".new-") for p in host.state_dir.iterdir())
