"""Precopy policies: when a live save stops the guest and copies the rest.

libxenguest's own policy (the one used when no ``precopy_policy`` callback
is installed) ignores time: at most 5 live rounds, or stop once fewer than
50 pages are dirty, then a stop-and-copy of whatever is dirty, however
long that takes.  :class:`DowntimePolicy` aims at a downtime instead, as
QEMU's ``downtime-limit`` does:

    policy = DowntimePolicy(downtime_limit=0.3, max_rounds=30,
                            max_time=60.0, on_no_convergence="abort")
    result = xensr.save_domain(domid, fd, callbacks, live=True, policy=policy)
    result.precopy.suspended_time, result.precopy.decisions

Parameters (the names of QEMU's migration parameters where it has one):

``downtime_limit`` (seconds, default 0.3, QEMU's 300 ms)
    Stop the guest once the estimated stop-and-copy time of the pages still
    dirty is at most this.
``max_rounds`` (default 30)
    Live rounds (the first, full one included) after which the policy gives
    up if the estimate is still above the limit.
``max_time`` (seconds, default None: no limit)
    Time since the first question after which it gives up likewise.
``on_no_convergence`` (``"stop-and-copy"``, the default, or ``"abort"``)
    Giving up: stop the guest and copy the rest anyway (the save completes,
    with a downtime above the limit, as libxenguest's policy would), or
    abort: libxenguest unwinds, log-dirty goes off, the guest was never
    suspended and keeps running, and the save fails (``ECANCELED``).

How the estimate is made (the same in xensr's helper, see
:data:`ENVIRONMENT`):

* libxenguest asks before the first round (``iteration`` 0, ``dirty_count``
  the guest's size): that count is not dirtying, and no transfer rate is
  known yet; the answer is always to copy.  The first round sends every
  page: its cost (it is the longest round by far, and it finds the most
  pages dirty) is a rate sample like any other, and its dirty count is not
  taken as a sign of non-convergence.
* After each round libxenguest asks twice.  The first time
  (``dirty_count`` -1, the log not read yet) the round has just ended: its
  pages divided by the time since the question that started it give a
  transfer-rate sample (pages per second, the policy's own clock: the
  stats carry no time).  The limits are checked there, so giving up stops
  before another round is sent.  The second time the count of pages dirty
  is known; a stop answered there still sends those pages while the guest
  runs, then suspends it and copies what was dirtied meanwhile.
* The estimate is ``dirty_count / rate``: what those pages would take
  while suspended.  Since they are still sent live first, the pages left
  for the stop-and-copy are those dirtied during that last live round,
  fewer when the guest converges: the estimate errs on the long side.
* Noise: the rate used is the lower of the last sample and a running
  average (halving weights); rounds of fewer than :data:`MIN_SAMPLE_PAGES`
  pages are not sampled once a rate is known (their time is mostly fixed
  costs), which would only lower the rate and lengthen the estimate.
* Below the limit the policy still goes on while the dirty count keeps
  shrinking (each count at most :data:`SHRINK_RATIO` of the one before;
  the first compared with the guest's size): such a round costs at most
  the pages left, fewer each time, and lowers the downtime further.  It
  stops when the count no longer shrinks, below :data:`FLOOR_PAGES`
  pages, when nothing is dirty, or at ``max_rounds`` / ``max_time`` (then
  as converged, not giving up).

A policy object holds the state of one save at a time (it starts afresh
at each ``iteration`` 0 question).  Given as the ``policy`` option of
:func:`xensr.save_domain` (and of the other save calls) it is copied for
each save, so one object may configure many saves at once; it can also be
the callbacks object itself, or a callbacks object may call its
:meth:`DowntimePolicy.precopy_policy`.
"""

from __future__ import annotations

import argparse
import enum
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .callbacks import PrecopyDecision, PrecopyStats

__all__ = [
    "DowntimePolicy",
    "OnNoConvergence",
    "Decision",
    "Round",
    "PrecopyReport",
    "ENVIRONMENT",
    "DEFAULT_DOWNTIME_LIMIT",
    "DEFAULT_MAX_ROUNDS",
    "add_precopy_arguments",
    "policy_from_args",
]

#: QEMU's ``downtime-limit`` default, 300 ms.
DEFAULT_DOWNTIME_LIMIT = 0.3
DEFAULT_MAX_ROUNDS = 30
#: Below this many dirty pages the policy stops whatever the trend
#: (libxenguest's own threshold).
FLOOR_PAGES = 50
#: Rounds smaller than this are no rate sample once a rate is known.
MIN_SAMPLE_PAGES = 1024
#: Below the limit, another round is worth it while the dirty count is
#: at most this fraction of the previous one.
SHRINK_RATIO = 0.95

#: The helper's environment variables (xensr's helper only; Debian's
#: ignores them): variable -> what it sets.  The policy is on when
#: XENSR_PRECOPY_DOWNTIME_LIMIT_MS is set.
ENVIRONMENT: Mapping[str, str] = {
    "XENSR_PRECOPY_DOWNTIME_LIMIT_MS": "downtime_limit, in milliseconds (1 to 3600000)",
    "XENSR_PRECOPY_MAX_ROUNDS": "max_rounds (1 to 1000000)",
    "XENSR_PRECOPY_MAX_TIME_MS": "max_time, in milliseconds (1 to 2^31-1)",
    "XENSR_PRECOPY_ON_NO_CONVERGENCE": "on_no_convergence: stop-and-copy or abort",
}

#: Bytes of a PAGE_DATA record per page (data and pfn) and per batch of
#: at most 1024 pages (record and PAGE_DATA headers), as libxenguest writes
#: them.
_PAGE_BYTES = 4096 + 8
_BATCH_PAGES = 1024
_BATCH_BYTES = 16


class OnNoConvergence(str, enum.Enum):
    """What :class:`DowntimePolicy` does when it gives up."""

    STOP_AND_COPY = "stop-and-copy"
    ABORT = "abort"


@dataclass(frozen=True)
class Decision:
    """One answer of the policy, with what it was based on."""

    #: The question's stats.
    iteration: int
    total_written: int
    dirty_count: int
    #: Seconds since the first question of the save.
    time: float
    #: The transfer rate used (pages/s); None before the first round ended.
    rate: Optional[float]
    #: Estimated stop-and-copy seconds of the dirty pages (None when the
    #: count is not known: the first question, and -1 ones).
    estimate: Optional[float]
    decision: PrecopyDecision
    #: Why, in a few words.
    reason: str


@dataclass(frozen=True)
class Round:
    """One round of a save as the helper reported it (its progress)."""

    #: 1, 2, ...: the live rounds, then the one after the suspend.
    number: int
    pages: int
    #: Stream bytes of its PAGE_DATA records, from the page count.
    bytes: int
    #: Seconds from the round's first progress report to its last.
    seconds: float
    #: Sent while the guest was suspended (the stop-and-copy round, and
    #: the VERIFY pass of a debug save).
    suspended: bool
    #: libxenguest's text for it ("Frames iteration 0", "Frames"...).
    name: str = ""

    @property
    def live(self) -> bool:
        """Sent while the guest ran."""
        return not self.suspended


@dataclass(frozen=True)
class PrecopyReport:
    """What happened to memory during a save (:attr:`xensr.SaveResult.precopy`).

    Built from libxenguest's progress reports, whatever the helper and the
    policy: the rounds and the suspension come from every helper; the
    decisions only from a :class:`DowntimePolicy` the save used.
    """

    rounds: Tuple[Round, ...] = ()
    decisions: Tuple[Decision, ...] = ()
    #: Pages sent once the guest was suspended (None: no suspension seen).
    pages_after_suspend: Optional[int] = None
    #: Seconds from the helper's report that the guest is suspended
    #: (libxenguest reports it as soon as the suspend callback returned)
    #: to the end of its stream (its "Complete" report, else the end of
    #: the helper).  None: no suspension seen.
    suspended_time: Optional[float] = None
    #: :func:`time.monotonic` at that report: a migration adds the time to
    #: the receiver's unpause to get the whole downtime.
    suspended_at: Optional[float] = None

    def downtime_until(self, unpaused_at: float) -> Optional[float]:
        """Seconds from the suspension to ``unpaused_at`` (a
        :func:`time.monotonic` reading where the guest runs again, e.g. the
        receiver's unpause in a migration); None without a suspension."""
        if self.suspended_at is None:
            return None
        return max(0.0, unpaused_at - self.suspended_at)

    @property
    def live_rounds(self) -> int:
        return sum(1 for r in self.rounds if not r.suspended)

    def to_dict(self) -> Dict[str, Any]:
        """As JSON: the rounds, the decisions (``decision`` as
        "continue-precopy", "stop-and-copy" or "abort"), the totals."""
        return {
            "rounds": [{"number": r.number, "name": r.name, "pages": r.pages,
                        "bytes": r.bytes, "seconds": r.seconds, "live": r.live}
                       for r in self.rounds],
            "pages": self.pages, "bytes": self.bytes,
            "decisions": [{"iteration": d.iteration, "dirty_count": d.dirty_count,
                           "seconds": d.time, "rate": d.rate, "estimate": d.estimate,
                           "decision": d.decision.name.lower().replace("_", "-"),
                           "reason": d.reason}
                          for d in self.decisions],
            "pages_after_suspend": self.pages_after_suspend,
            "suspended_seconds": self.suspended_time,
        }

    @property
    def pages(self) -> int:
        return sum(r.pages for r in self.rounds)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rounds)


def page_data_bytes(pages: int) -> int:
    """Stream bytes of ``pages`` pages in PAGE_DATA records."""
    return pages * _PAGE_BYTES + -(-pages // _BATCH_PAGES) * _BATCH_BYTES


# ----------------------------------------------------------------------
# The policy

def _check_seconds(name: str, value: Optional[float], allow_none: bool) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class DowntimePolicy:
    """A precopy policy aiming at a downtime (module docstring)."""

    def __init__(self, downtime_limit: float = DEFAULT_DOWNTIME_LIMIT,
                 max_rounds: int = DEFAULT_MAX_ROUNDS,
                 max_time: Optional[float] = None,
                 on_no_convergence: str = OnNoConvergence.STOP_AND_COPY, *,
                 clock: Callable[[], float] = time.monotonic):
        limit = _check_seconds("downtime_limit", downtime_limit, False)
        assert limit is not None
        self.downtime_limit = limit
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int):
            raise TypeError(f"max_rounds must be an int, not {type(max_rounds).__name__}")
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, not {max_rounds}")
        self.max_rounds = max_rounds
        self.max_time = _check_seconds("max_time", max_time, True)
        try:
            self.on_no_convergence = OnNoConvergence(on_no_convergence)
        except ValueError:
            raise ValueError(
                "on_no_convergence must be 'stop-and-copy' or 'abort', "
                f"not {on_no_convergence!r}") from None
        self.clock = clock
        #: The answers of the current (or last) save.
        self.decisions: List[Decision] = []
        self._reset()

    def __repr__(self) -> str:
        return (f"DowntimePolicy(downtime_limit={self.downtime_limit!r}, "
                f"max_rounds={self.max_rounds!r}, max_time={self.max_time!r}, "
                f"on_no_convergence={self.on_no_convergence.value!r})")

    def fresh(self) -> "DowntimePolicy":
        """A policy with the same parameters and no state."""
        return DowntimePolicy(self.downtime_limit, self.max_rounds, self.max_time,
                              self.on_no_convergence, clock=self.clock)

    def environ(self) -> Dict[str, str]:
        """The helper environment that sets this policy in xensr's helper
        (e.g. for ``xl`` run with ``LIBXL_SAVE_HELPER``)."""
        env = {
            "XENSR_PRECOPY_DOWNTIME_LIMIT_MS": str(max(1, round(self.downtime_limit * 1000))),
            "XENSR_PRECOPY_MAX_ROUNDS": str(self.max_rounds),
            "XENSR_PRECOPY_ON_NO_CONVERGENCE": self.on_no_convergence.value,
        }
        if self.max_time is not None:
            env["XENSR_PRECOPY_MAX_TIME_MS"] = str(max(1, round(self.max_time * 1000)))
        return env

    def _reset(self) -> None:
        self._t0 = 0.0
        self._round_start = 0.0
        self._round_pages = 0
        self._rounds = 0
        self._sample: Optional[float] = None
        self._average: Optional[float] = None
        self._last_count: Optional[int] = None
        self._within = False

    @property
    def rate(self) -> Optional[float]:
        """The transfer rate the estimate uses (pages/s), None before the
        first round ended."""
        if self._sample is None or self._average is None:
            return None
        return min(self._sample, self._average)

    def precopy_policy(self, stats: PrecopyStats) -> PrecopyDecision:
        """libxenguest's question (see the module docstring)."""
        now = self.clock()
        if stats.iteration == 0 and stats.dirty_count >= 0:
            self._reset()
            self.decisions = []
            self._t0 = self._round_start = now
            self._round_pages = self._last_count = stats.dirty_count
            return self._answer(stats, now, None, PrecopyDecision.CONTINUE_PRECOPY,
                                "first round: every page")
        if stats.dirty_count < 0:
            return self._round_ended(stats, now)
        return self._count_known(stats, now)

    def _round_ended(self, stats: PrecopyStats, now: float) -> PrecopyDecision:
        self._rounds += 1
        seconds = now - self._round_start
        pages = self._round_pages
        if pages > 0 and seconds > 0 and (
                self._sample is None or pages >= MIN_SAMPLE_PAGES):
            self._sample = pages / seconds
            self._average = (self._sample if self._average is None
                             else (self._average + self._sample) / 2)
        why = None
        if self._rounds >= self.max_rounds:
            why = f"{self._rounds} live rounds"
        elif self.max_time is not None and now - self._t0 >= self.max_time:
            why = f"{now - self._t0:.3f} s of precopy"
        if why is not None:
            if self._within:
                # Converged: it was only going on while the count shrank.
                return self._answer(stats, now, None, PrecopyDecision.STOP_AND_COPY,
                                    f"within the limit, stopped at {why}")
            return self._give_up(stats, now, why)
        return self._answer(stats, now, None, PrecopyDecision.CONTINUE_PRECOPY,
                            "round sent, count not known yet")

    def _count_known(self, stats: PrecopyStats, now: float) -> PrecopyDecision:
        count = stats.dirty_count
        last, self._last_count = self._last_count, count
        self._round_start = now
        self._round_pages = count
        rate = self.rate
        estimate = count / rate if rate else None
        self._within = estimate is not None and estimate <= self.downtime_limit
        if count == 0:
            return self._answer(stats, now, 0.0, PrecopyDecision.STOP_AND_COPY, "nothing dirty")
        if estimate is not None and estimate <= self.downtime_limit:
            if count < FLOOR_PAGES:
                reason = f"within the limit, {count} pages"
            elif last is not None and count <= last * SHRINK_RATIO:
                return self._answer(stats, now, estimate, PrecopyDecision.CONTINUE_PRECOPY,
                                    "within the limit, still shrinking")
            else:
                reason = "within the limit"
            return self._answer(stats, now, estimate, PrecopyDecision.STOP_AND_COPY, reason)
        if self.max_time is not None and now - self._t0 >= self.max_time:
            return self._give_up(stats, now, f"{now - self._t0:.3f} s of precopy",
                                 estimate)
        return self._answer(stats, now, estimate, PrecopyDecision.CONTINUE_PRECOPY,
                            "above the limit")

    def _give_up(self, stats: PrecopyStats, now: float, why: str,
                 estimate: Optional[float] = None) -> PrecopyDecision:
        if self.on_no_convergence is OnNoConvergence.ABORT:
            return self._answer(stats, now, estimate, PrecopyDecision.ABORT,
                                f"no convergence after {why}: abort")
        return self._answer(stats, now, estimate, PrecopyDecision.STOP_AND_COPY,
                            f"no convergence after {why}: stop and copy anyway")

    def _answer(self, stats: PrecopyStats, now: float, estimate: Optional[float],
                decision: PrecopyDecision, reason: str) -> PrecopyDecision:
        self.decisions.append(Decision(
            iteration=stats.iteration, total_written=stats.total_written,
            dirty_count=stats.dirty_count, time=now - self._t0, rate=self.rate,
            estimate=estimate, decision=decision, reason=reason))
        return decision


# ----------------------------------------------------------------------
# Results: the rounds from the helper's progress reports

class RoundRecorder:
    """Follows a save's progress reports (and hands each on to ``forward``,
    the toolstack's own ``progress`` callback, if any); :meth:`report`
    turns them into a :class:`PrecopyReport`.

    libxenguest reports each round as "Frames iteration N" (a non-live
    save: "Frames"), from 0 to the round's page count; "Domain now
    suspended" as soon as the suspend callback returned; "Complete" once
    the stream is written.  A round starts at each "Frames..." report whose
    text differs from the report before it (the round after the suspend
    may repeat the last live round's text).  :meth:`current` is the round
    being sent, for a live display (``forward`` runs after the report was
    recorded).
    """

    __slots__ = ("forward", "clock", "_rounds", "_last_text", "_suspended_at",
                 "_complete_at", "_in_round")

    def __init__(self, forward: Optional[Callable[..., Any]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.forward = forward
        self.clock = clock
        # [pages, first report time, last report time, suspended, text]
        self._rounds: List[List[Any]] = []
        self._last_text = ""
        self._in_round = False
        self._suspended_at: Optional[float] = None
        self._complete_at: Optional[float] = None

    def progress(self, context: str, doing_what: str, done: int, total: int) -> Any:
        now = self.clock()
        if doing_what != self._last_text:
            self._last_text = doing_what
            self._in_round = (doing_what == "Frames"
                              or doing_what.startswith("Frames iteration"))
            if self._in_round:
                self._rounds.append([total, now, now, self._suspended_at is not None,
                                     doing_what])
            elif doing_what == "Domain now suspended":
                self._suspended_at = now
            elif doing_what == "Complete":
                self._complete_at = now
        elif self._in_round:
            r = self._rounds[-1]
            r[0] = max(r[0], total)
            r[2] = now
        if self.forward is not None:
            return self.forward(context, doing_what, done, total)
        return None

    def current(self) -> Optional[Round]:
        """The round being sent, as far as it went; None between rounds."""
        if not self._in_round:
            return None
        return self._round(len(self._rounds) - 1)

    def _round(self, i: int) -> Round:
        pages, first, last, suspended, text = self._rounds[i]
        return Round(number=i + 1, pages=pages, bytes=page_data_bytes(pages),
                     seconds=last - first, suspended=suspended, name=text)

    def report(self, decisions: Tuple[Decision, ...] = (),
               ended_at: Optional[float] = None) -> PrecopyReport:
        rounds = tuple(self._round(i) for i in range(len(self._rounds)))
        suspended_time = None
        if self._suspended_at is not None:
            end = self._complete_at if self._complete_at is not None else ended_at
            if end is not None:
                suspended_time = max(0.0, end - self._suspended_at)
        after = (sum(r.pages for r in rounds if r.suspended)
                 if self._suspended_at is not None else None)
        return PrecopyReport(rounds=rounds, decisions=tuple(decisions),
                             pages_after_suspend=after, suspended_time=suspended_time,
                             suspended_at=self._suspended_at)


# ----------------------------------------------------------------------
# Command line

def _positive(unit: str) -> Callable[[str], float]:
    """An argparse type: a positive, finite number of ``unit``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of {unit}: {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number of {unit}: {text!r}")
        return value
    return parse


_milliseconds = _positive("milliseconds")
_seconds_arg = _positive("seconds")


def _rounds_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def add_precopy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the live-save policy options to a subcommand's parser; read
    them back with :func:`policy_from_args`."""
    g = parser.add_argument_group(
        "precopy policy (live saves)",
        "Without any of these, libxenguest's default: at most 5 live rounds or "
        "fewer than 50 dirty pages, then a stop-and-copy of unbounded length.")
    g.add_argument("--downtime-limit", type=_milliseconds, default=None, metavar="MS",
                   help="stop the guest once the estimated stop-and-copy time is at most "
                        f"MS milliseconds (default {DEFAULT_DOWNTIME_LIMIT * 1000:g} when "
                        "any policy option is given)")
    g.add_argument("--max-rounds", type=_rounds_arg, default=None, metavar="N",
                   help=f"give up after N live rounds (default {DEFAULT_MAX_ROUNDS})")
    g.add_argument("--max-time", type=_seconds_arg, default=None, metavar="SECONDS",
                   help="give up after SECONDS of precopy (default: no limit)")
    g.add_argument("--on-no-convergence", choices=[o.value for o in OnNoConvergence],
                   default=None,
                   help="giving up: stop the guest and copy the rest (default), or abort "
                        "the save and leave the guest running")


def policy_from_args(args: argparse.Namespace) -> Optional[DowntimePolicy]:
    """The policy the options of :func:`add_precopy_arguments` ask for, or
    None (libxenguest's default) when none was given."""
    given = (args.downtime_limit, args.max_rounds, args.max_time, args.on_no_convergence)
    if all(v is None for v in given):
        return None
    return DowntimePolicy(
        downtime_limit=(DEFAULT_DOWNTIME_LIMIT if args.downtime_limit is None
                        else args.downtime_limit / 1000),
        max_rounds=DEFAULT_MAX_ROUNDS if args.max_rounds is None else args.max_rounds,
        max_time=args.max_time,
        on_no_convergence=args.on_no_convergence or OnNoConvergence.STOP_AND_COPY)
