"""DowntimePolicy's decisions from synthetic stats and a synthetic clock."""

from __future__ import annotations

import argparse

import pytest

from xensr.callbacks import PrecopyDecision, PrecopyStats
from xensr.policy import (DowntimePolicy, FLOOR_PAGES, MIN_SAMPLE_PAGES, OnNoConvergence,
                          RoundRecorder, add_precopy_arguments, page_data_bytes,
                          policy_from_args)

CONTINUE = PrecopyDecision.CONTINUE_PRECOPY
STOP = PrecopyDecision.STOP_AND_COPY
ABORT = PrecopyDecision.ABORT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Save:
    """libxenguest's questions, as send_memory_live asks them: before the
    first round, then after each round once with -1 and (unless told to
    stop) once with the count.  Each round takes pages / rate seconds."""

    def __init__(self, policy: DowntimePolicy, clock: Clock, nr_pages: int, rate: float):
        self.p, self.clock, self.rate = policy, clock, rate
        self.written = 0
        self.iteration = 0
        self.pending = nr_pages

    def start(self) -> PrecopyDecision:
        return self.p.precopy_policy(PrecopyStats(0, 0, self.pending))

    def round(self, dirty: int, seconds: "float | None" = None) -> PrecopyDecision:
        """Send the pending pages; then the -1 question, then (if it says
        go on) the count question with ``dirty``."""
        self.clock.now += self.pending / self.rate if seconds is None else seconds
        self.iteration += 1
        self.written += self.pending
        d = self.p.precopy_policy(PrecopyStats(self.iteration, self.written, -1))
        if d != CONTINUE:
            return d
        self.pending = dirty
        return self.p.precopy_policy(PrecopyStats(self.iteration, self.written, dirty))


def test_first_question_continues_without_estimate():
    clock = Clock()
    p = DowntimePolicy(0.3, clock=clock)
    assert Save(p, clock, 65536, 1e5).start() == CONTINUE
    (d,) = p.decisions
    assert d.rate is None and d.estimate is None and d.dirty_count == 65536


def test_minus_one_question_continues_and_samples_the_rate():
    clock = Clock()
    p = DowntimePolicy(0.3, clock=clock)
    s = Save(p, clock, 65536, 65536.0)   # the first round takes 1 s
    s.start()
    clock.now += 1.0
    assert p.precopy_policy(PrecopyStats(1, 65536, -1)) == CONTINUE
    assert p.rate == pytest.approx(65536.0)
    assert p.decisions[-1].estimate is None


def test_stops_once_the_estimate_is_within_the_limit():
    clock = Clock()
    p = DowntimePolicy(0.3, clock=clock)
    s = Save(p, clock, 100000, 10000.0)     # 10 s first round
    s.start()
    # 3100 dirty: 0.31 s at 10000 pages/s, above 0.3 s.
    assert s.round(3100) == CONTINUE
    assert p.decisions[-1].estimate == pytest.approx(0.31)
    # 2990 dirty: 0.299 s, within; hardly shrinking (3100 -> 2990): stop.
    assert s.round(2990) == STOP
    last = p.decisions[-1]
    assert last.estimate == pytest.approx(0.299) and last.reason == "within the limit"


def test_goes_on_below_the_limit_while_the_count_shrinks():
    clock = Clock()
    p = DowntimePolicy(0.3, clock=clock)
    s = Save(p, clock, 100000, 100000.0)
    s.start()
    assert s.round(2000) == CONTINUE           # 0.02 s, but 100000 -> 2000
    assert p.decisions[-1].reason == "within the limit, still shrinking"
    assert s.round(900) == CONTINUE            # shrinking
    assert s.round(880) == STOP                # by less than SHRINK_RATIO
    assert s.iteration == 3


def test_stops_below_the_floor_and_when_nothing_is_dirty():
    clock = Clock()
    p = DowntimePolicy(0.3, clock=clock)
    s = Save(p, clock, 100000, 100000.0)
    s.start()
    assert s.round(FLOOR_PAGES - 1) == STOP
    p2 = DowntimePolicy(0.3, clock=clock)
    s2 = Save(p2, clock, 100000, 100000.0)
    s2.start()
    assert s2.round(0) == STOP and p2.decisions[-1].reason == "nothing dirty"


@pytest.mark.parametrize("onc,final", [("abort", ABORT), ("stop-and-copy", STOP)])
def test_gives_up_after_max_rounds_at_the_minus_one_question(onc, final):
    clock = Clock()
    p = DowntimePolicy(0.01, max_rounds=4, on_no_convergence=onc, clock=clock)
    s = Save(p, clock, 100000, 10000.0)
    s.start()
    answers = [s.round(20000) for _ in range(4)]
    assert answers == [CONTINUE, CONTINUE, CONTINUE, final]
    last = p.decisions[-1]
    assert last.dirty_count == -1 and last.iteration == 4
    assert last.reason.startswith("no convergence after 4 live rounds")


def test_gives_up_after_max_time():
    clock = Clock()
    p = DowntimePolicy(0.01, max_time=25.0, on_no_convergence="abort", clock=clock)
    s = Save(p, clock, 100000, 10000.0)      # 10 s per round of 100000
    s.start()
    assert s.round(100000) == CONTINUE        # t = 10
    assert s.round(100000) == CONTINUE        # t = 20
    assert s.round(100000) == ABORT           # t = 30 >= 25
    assert "s of precopy" in p.decisions[-1].reason


def test_a_limit_reached_while_within_the_target_stops_as_converged():
    clock = Clock()
    p = DowntimePolicy(0.3, max_rounds=2, on_no_convergence="abort", clock=clock)
    s = Save(p, clock, 100000, 100000.0)
    s.start()
    assert s.round(2000) == CONTINUE          # within, still shrinking
    assert s.round(900) == STOP               # round 2 = max_rounds: not ABORT
    assert p.decisions[-1].reason.startswith("within the limit, stopped at")


def test_noise_the_lower_of_sample_and_average_and_small_rounds_ignored():
    clock = Clock()
    p = DowntimePolicy(0.3, clock=clock)
    s = Save(p, clock, 100000, 100000.0)
    s.start()
    s.round(50000, seconds=1.0)               # 100000 pages/s
    assert p.rate == pytest.approx(100000.0)
    s.round(40000, seconds=0.1)               # 50000 in 0.1 s: 500000 pages/s
    # average 300000, sample 500000: the lower one.
    assert p.rate == pytest.approx(300000.0)
    s.round(MIN_SAMPLE_PAGES - 1, seconds=1.0)  # 40000 pages in 1 s: sampled
    assert p.rate == pytest.approx(40000.0)
    rate = p.rate
    s.round(30000, seconds=10.0)              # a tiny round: no sample
    assert p.rate == rate


def test_a_new_save_starts_afresh():
    clock = Clock()
    p = DowntimePolicy(0.3, clock=clock)
    s = Save(p, clock, 1000, 1000.0)
    s.start()
    s.round(500)
    Save(p, clock, 2000, 1000.0).start()
    assert len(p.decisions) == 1 and p.rate is None


def test_fresh_copies_parameters_only():
    p = DowntimePolicy(0.5, max_rounds=7, max_time=3.0, on_no_convergence="abort")
    p.precopy_policy(PrecopyStats(0, 0, 10))
    q = p.fresh()
    assert (q.downtime_limit, q.max_rounds, q.max_time, q.on_no_convergence) == \
        (0.5, 7, 3.0, OnNoConvergence.ABORT)
    assert q.decisions == [] and q is not p


def test_environ():
    assert DowntimePolicy(0.25, max_rounds=9, max_time=2.5, on_no_convergence="abort").environ() == {
        "XENSR_PRECOPY_DOWNTIME_LIMIT_MS": "250", "XENSR_PRECOPY_MAX_ROUNDS": "9",
        "XENSR_PRECOPY_MAX_TIME_MS": "2500", "XENSR_PRECOPY_ON_NO_CONVERGENCE": "abort"}
    assert "XENSR_PRECOPY_MAX_TIME_MS" not in DowntimePolicy().environ()


@pytest.mark.parametrize("kw,exc", [
    ({"downtime_limit": 0}, ValueError), ({"downtime_limit": -1}, ValueError),
    ({"downtime_limit": float("nan")}, ValueError), ({"downtime_limit": "1"}, TypeError),
    ({"max_rounds": 0}, ValueError), ({"max_rounds": 1.5}, TypeError),
    ({"max_rounds": True}, TypeError), ({"max_time": 0}, ValueError),
    ({"on_no_convergence": "pause"}, ValueError),
])
def test_bad_parameters(kw, exc):
    with pytest.raises(exc):
        DowntimePolicy(**kw)


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    add_precopy_arguments(parser)
    assert policy_from_args(parser.parse_args([])) is None
    p = policy_from_args(parser.parse_args(["--downtime-limit", "50"]))
    assert p is not None and (p.downtime_limit, p.max_rounds, p.max_time) == (0.05, 30, None)
    p = policy_from_args(parser.parse_args(
        ["--max-rounds", "4", "--max-time", "1.5", "--on-no-convergence", "abort"]))
    assert p is not None and (p.downtime_limit, p.max_rounds, p.max_time) == (0.3, 4, 1.5)
    assert p.on_no_convergence is OnNoConvergence.ABORT
    for bad in (["--downtime-limit", "0"], ["--max-rounds", "0"], ["--max-time", "x"],
                ["--on-no-convergence", "maybe"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_round_recorder_from_progress_reports():
    clock = Clock()
    seen = []
    r = RoundRecorder(lambda *a: seen.append(a), clock=clock)
    reports = [("Start of stream", 0, 0), ("Frames iteration 0", 0, 3000),
               ("Frames iteration 0", 1024, 3000), ("Frames iteration 0", 3000, 3000),
               ("Frames iteration 1", 0, 40), ("Frames iteration 1", 40, 40),
               ("Domain now suspended", 0, 0),
               ("Frames iteration 1", 0, 7), ("Frames iteration 1", 7, 7),
               ("End of stream", 0, 0), ("Complete", 0, 0)]
    current = []
    for what, done, total in reports:
        clock.now += 1
        r.progress("xc", what, done, total)
        c = r.current()
        current.append(None if c is None else (c.number, c.name, c.pages, c.suspended))
    rep = r.report((), ended_at=clock.now + 5)
    assert len(seen) == len(reports)
    # The round being sent, for a live display; None between rounds.
    assert current == [None, (1, "Frames iteration 0", 3000, False),
                       (1, "Frames iteration 0", 3000, False),
                       (1, "Frames iteration 0", 3000, False),
                       (2, "Frames iteration 1", 40, False), (2, "Frames iteration 1", 40, False),
                       None, (3, "Frames iteration 1", 7, True), (3, "Frames iteration 1", 7, True),
                       None, None]
    assert [x.name for x in rep.rounds] == ["Frames iteration 0", "Frames iteration 1",
                                            "Frames iteration 1"]
    assert [x.live for x in rep.rounds] == [True, True, False]
    doc = rep.to_dict()
    assert [x["pages"] for x in doc["rounds"]] == [3000, 40, 7]
    assert doc["pages_after_suspend"] == 7 and doc["suspended_seconds"] == 4.0
    assert [(x.pages, x.suspended, x.seconds) for x in rep.rounds] == \
        [(3000, False, 2.0), (40, False, 1.0), (7, True, 1.0)]
    assert rep.pages_after_suspend == 7 and rep.live_rounds == 2
    assert rep.suspended_time == 4.0          # suspended report -> Complete
    assert rep.bytes == page_data_bytes(3000) + page_data_bytes(40) + page_data_bytes(7)
    assert page_data_bytes(1025) == 1025 * 4104 + 32


def test_downtime_until():
    from xensr.policy import PrecopyReport

    assert PrecopyReport(suspended_at=10.0).downtime_until(10.25) == 0.25
    assert PrecopyReport().downtime_until(3.0) is None
