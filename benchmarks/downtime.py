"""7. Downtime: xensr's DowntimePolicy against libxenguest's default policy.

A simulated guest dirties its working set at a rate in wall time
(``SimulatedHost.create_domain(dirty_rate=, working_set=)``) while a live
save streams it into a pipe drained by another process at a fixed rate
(the transport: the same for both policies).  For each dirtying rate, from
almost idle to one that never converges, both policies save the same
guest, interleaved: libxenguest's own (xensr's helper without a policy:
at most 5 live rounds or fewer than 50 dirty pages) and
``DowntimePolicy(downtime_limit=0.3, max_time=T, on_no_convergence=
"abort")`` (the default 30 rounds; T is 4 times what the first, full round
takes).  Figures of each save: pages sent while suspended and the time
suspended (``SaveResult.precopy``: from the helper's "Domain now
suspended" to its "Complete"), total time, and the bytes the drain
counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Tuple

from .harness import Group, Result, Series, Target, interleave

LIMIT = 0.3                     # seconds: QEMU's downtime-limit default
FIRST_ROUNDS = 4                # max_time: this many first rounds' time
SUSPENDED_RATIO = 0.2           # goal: at most 0.2x the default's suspended time
BYTES_RATIO = 1.5               # for at most 1.5x its bytes

# The drain: reads stdin at BPS bytes per second (token bucket, 64 KiB
# reads), prints the byte count at EOF.
_DRAIN = r"""
import os, sys, time
bps = float(sys.argv[1]); n = 0; t0 = time.monotonic()
while True:
    b = os.read(0, 65536)
    if not b:
        break
    n += len(b)
    ahead = n / bps - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
print(n)
"""

#: (name, pages per second, working set in pages) of a 64 MiB guest (16384
#: pages) streamed at 64 MiB/s (16384 pages/s).
RATES: Tuple[Tuple[str, int, int], ...] = (
    ("idle", 50, 16384),
    ("light", 2000, 8192),
    ("busy", 10000, 8192),
    ("heavy", 16000, 8192),
    ("never", 100000, 12288),
)


def run(quick: bool, reps: int) -> Result:
    from xensr.testing import SimulatedHost

    mib = 8 if quick else 64
    bps = (16 if quick else 64) << 20
    # Rates scale with the link, working sets with the guest.
    rate_scale, ws_scale = bps / (64 << 20), mib / 64
    res = Result("downtime", "live save: DowntimePolicy against libxenguest's default",
                 params={"guest_mib": mib, "transport_bytes_per_s": bps, "reps": reps,
                         "downtime_limit_s": LIMIT, "max_time_s": FIRST_ROUNDS * mib / (bps >> 20)})
    raw: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="xensr-bench-downtime-") as tmp, \
            SimulatedHost(os.path.join(tmp, "host"), auto_suspend=True) as host:
        for name, rate, ws in RATES:
            rate, ws = max(1, int(rate * rate_scale)), max(1, int(ws * ws_scale))
            bench = _Saves(host, mib, rate, ws, bps)
            raw[name] = interleave(bench.variants(), reps, warmup=0)
    _add_figures(res, raw)
    res.notes.append(
        "pages per second of wall time over a working set of the guest's first pages; "
        "the transport is a pipe drained at a fixed rate by another process (the "
        "same for both policies); xensr's policy aborts where it cannot converge "
        "(the guest keeps running, nothing is suspended): those rows count the "
        "aborts, their suspended time is 0")
    return res


class _Saves:
    def __init__(self, host: Any, mib: int, rate: int, ws: int, bps: int):
        self.host, self.mib, self.rate, self.ws, self.bps = host, mib, rate, ws, bps

    def variants(self) -> Dict[str, Callable[[], Dict[str, float]]]:
        from xensr.policy import DowntimePolicy

        policy = DowntimePolicy(LIMIT, max_time=FIRST_ROUNDS * self.mib / (self.bps >> 20),
                                on_no_convergence="abort")
        return {"default": lambda: self.save(None), "xensr": lambda: self.save(policy)}

    def save(self, policy: Any) -> Dict[str, float]:
        import xensr
        from xensr.errors import SaveRestoreError

        dom = self.host.create_domain(self.mib, dirty_pages=0, dirty_rate=self.rate,
                                      working_set=self.ws)
        r, w = os.pipe()
        drain = subprocess.Popen([sys.executable, "-c", _DRAIN, str(self.bps)], stdin=r,
                                 stdout=subprocess.PIPE)
        os.close(r)
        aborted = 0.0
        try:
            try:
                result = xensr.save_domain(dom, w, live=True, env=self.host.env,
                                           policy=policy)
            except SaveRestoreError:
                if policy is None:
                    raise
                aborted = 1.0
                result = None
        finally:
            os.close(w)
            out, _ = drain.communicate()
            self.host.destroy_domain(dom)
        nbytes = float(out.split()[0])
        if result is None:
            return {"suspended_s": 0.0, "pages_suspended": 0.0, "total_s": float("nan"),
                    "bytes": nbytes, "rounds": float("nan"), "aborted": aborted}
        p = result.precopy
        return {"suspended_s": p.suspended_time or 0.0,
                "pages_suspended": float(p.pages_after_suspend or 0),
                "total_s": result.elapsed, "bytes": nbytes,
                "rounds": float(len(p.rounds)), "aborted": aborted}


def _add_figures(res: Result, raw: Dict[str, Dict[str, Dict[str, List[float]]]]) -> None:
    for name, per in raw.items():
        def series(variant: str, key: str, unit: str) -> Series:
            return Series(f"{name}: {variant}", unit, per[variant][key])

        groups = [
            Group(f"{name}: time suspended", [series("default", "suspended_s", "s"),
                                              series("xensr", "suspended_s", "s")],
                  baseline=f"{name}: default"),
            Group(f"{name}: pages sent while suspended",
                  [series("default", "pages_suspended", "pages"),
                   series("xensr", "pages_suspended", "pages")], baseline=f"{name}: default"),
            Group(f"{name}: total time", [series("default", "total_s", "s"),
                                          series("xensr", "total_s", "s")],
                  baseline=f"{name}: default"),
            Group(f"{name}: bytes through the transport",
                  [series("default", "bytes", "B"), series("xensr", "bytes", "B")],
                  baseline=f"{name}: default"),
            Group(f"{name}: rounds (live + final), aborts",
                  [series("default", "rounds", "rounds"), series("xensr", "rounds", "rounds"),
                   series("xensr", "aborted", "aborts")]),
        ]
        res.groups += groups
        aborted = max(per["xensr"]["aborted"]) > 0
        if aborted:
            res.targets.append(Target(
                f"{name}: unreachable, xensr aborts cleanly (aborted runs / runs)",
                sum(per["xensr"]["aborted"]) / len(per["xensr"]["aborted"]), 1.0, ">=",
                "the source keeps running; the default's downtime is the figure above"))
            continue
        susp = groups[0]
        res.targets.append(Target(f"{name}: xensr suspended time (s) within the limit",
                                  susp.get(f"{name}: xensr").median, LIMIT, "<="))
        res.targets.append(Target(f"{name}: xensr / default suspended time",
                                  susp.ratio(f"{name}: xensr"), SUSPENDED_RATIO, "<="))
        res.targets.append(Target(f"{name}: xensr / default bytes",
                                  groups[3].ratio(f"{name}: xensr"), BYTES_RATIO, "<="))
