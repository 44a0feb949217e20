"""8. Many migrations at once in one asyncio thread.

N small guests migrate from one simulated host to another, each host
with its own state directory, senders (``aio_migrate_domain``) and
receivers (``aio_receive_domain``) on one asyncio loop in one thread,
over socket pairs: all N at once, against the same N one after the other
(one migration times N, back to back).  Each run is a fresh process
(benchmarks/migmanychild.py), so that resident-memory deltas are not
hidden by memory an earlier run freed; the two modes alternate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

from .harness import ROOT, BenchError, CBuild, Group, Result, Series, Target

MODES = ("concurrent", "sequential")
TIME_TARGET = 1.0           # all at once over one after the other
RSS_TARGET = 128            # KiB per migration, both of its sides in this process


def _child(n: int, mode: str, tmp: str) -> Dict[str, float]:
    work = tempfile.mkdtemp(prefix=f"{mode}-", dir=tmp)
    cmd = [sys.executable, "-m", "benchmarks.migmanychild", str(n), mode, work]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if proc.returncode:
        raise BenchError(f"migrate-many run n={n} {mode} failed:\n{proc.stderr[-4000:]}")
    out: Dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(build: CBuild, quick: bool, reps: int) -> Result:
    from .migmanychild import DIRTY_PAGES, DOMAIN_MIB

    n = 10 if quick else 100
    res = Result("migrate-many", f"{n} migrations at once in one asyncio thread",
                 params={"migrations": n, "guest_mib": DOMAIN_MIB,
                         "dirty_pages_per_round": DIRTY_PAGES, "reps": reps})
    samples: Dict[str, Dict[str, List[float]]] = {
        m: {"wall": [], "rss": [], "fds": [], "after": [], "mib": []} for m in MODES}
    with tempfile.TemporaryDirectory(prefix="xensr-bench-many-") as tmp:
        for rep in range(reps):
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for mode in order:
                out = _child(n, mode, tmp)
                s = samples[mode]
                s["wall"].append(out["wall_s"] * 1e3)
                s["rss"].append(out["rss_delta_kib"] / n)
                s["fds"].append(out["fds_delta"] / n)
                s["after"].append(out["fds_after_delta"])
                s["mib"].append(out["stream_bytes"] / n / 2**20)
    label = {"concurrent": f"{n} at once", "sequential": f"{n} one after the other"}
    wall = Group("total wall time", [Series(label[m], "ms", samples[m]["wall"]) for m in MODES],
                 baseline=label["sequential"])
    mem = Group("parent memory per migration (peak RSS delta / n, both sides)",
                [Series(label[m], "KiB", samples[m]["rss"]) for m in MODES])
    fds = Group("fds per migration (peak open fds delta / n) and fds left after",
                [Series(f"{label[m]}: per migration", "fds", samples[m]["fds"]) for m in MODES]
                + [Series(f"{label[m]}: left after", "fds", samples[m]["after"])
                   for m in MODES])
    size = Group("stream per migration", [Series(label[m], "MiB", samples[m]["mib"])
                                          for m in MODES])
    res.groups += [wall, mem, fds, size]
    res.targets.append(Target(f"{n} at once: time over one after the other",
                              wall.ratio(label["concurrent"]), TIME_TARGET, "<="))
    res.targets.append(Target(f"{n} at once: parent RSS per migration (KiB)",
                              mem.get(label["concurrent"]).median, RSS_TARGET, "<="))
    res.targets.append(Target(f"{n} at once: fds left after",
                              fds.get(f"{label['concurrent']}: left after").median, 0, "<="))
    res.notes.append(
        "both sides of every migration run in the measuring process (sender and "
        "receiver on one loop), so memory and fds per migration are those of a "
        "sender plus a receiver; the helpers are other processes; RSS and open fds "
        "are sampled every 10 ms and the peak taken; the sequential mode is one "
        "migration times n, back to back, on the same loop")
    return res
