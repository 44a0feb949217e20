"""4. Many simultaneous operations in one thread.

Each (count, repetition) runs in a fresh process (benchmarks/concchild.py)
so that resident-memory deltas are not hidden by memory an earlier run
freed.  Runs are interleaved over the counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Dict, List, Optional

from .harness import ROOT, BenchError, CBuild, Group, Result, Series, Target

KINDS = {
    "simhost": "1 MiB PV domains of a SimulatedHost, non-live save by xensr-save-helper",
    "bench": "bench helper in mode hold (starting line, one suspend request, complete)",
}


DOMAIN_MIB = 1


def _child(n: int, kind: str, trace: bool, arg: str) -> Dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.concchild", str(n), kind,
           "1" if trace else "0", arg]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise BenchError(
            f"concurrency run n={n} kind={kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(build: CBuild, quick: bool, reps: int, kinds: List[str]) -> Result:
    helper = build.bench_helper()
    counts = [1, 10, 100] if quick else [1, 10, 100, 1000]
    reps = min(reps, 3) if quick else reps
    res = Result("concurrency", "simultaneous operations in one thread (asyncio)",
                 params={"counts": counts, "reps": reps, "kinds": kinds})
    host = None
    if "simhost" in kinds:
        from xensr.testing import SimulatedHost

        # Created once and shared by every run: a non-live save leaves a
        # domain suspended, and saving a suspended domain works the same.
        t0 = time.monotonic()
        host = SimulatedHost(auto_suspend=True)
        for _ in range(max(counts) + 1):
            host.create_domain(DOMAIN_MIB)
        res.params["rig_setup_s"] = round(time.monotonic() - t0, 1)
    try:
        _measure(res, counts, reps, kinds, helper, host)
    finally:
        if host is not None:
            host.close()
    res.notes.append(
        "memory and fds are read when every operation has reached its suspend "
        "callback (a coroutine waiting at a barrier), i.e. with all helpers "
        "running; the per-operation figures include the asyncio task of each "
        "operation; tracemalloc runs are separate runs (it slows allocation)")
    return res


def _measure(res: Result, counts: List[int], reps: int, kinds: List[str],
             helper: str, host: Optional[object]) -> None:
    for kind in kinds:
        arg = str(host.state_dir) if kind == "simhost" else helper  # type: ignore[union-attr]
        samples: Dict[int, Dict[str, List[float]]] = {
            n: {"wall": [], "rss": [], "fds": [], "after": [], "traced": []}
            for n in counts
        }
        for rep in range(reps):
            order = counts[rep % len(counts):] + counts[:rep % len(counts)]
            for n in order:
                out = _child(n, kind, False, arg)
                s = samples[n]
                s["wall"].append(out["wall_s"] * 1e3)
                s["rss"].append(out["rss_delta_kib"] / n)
                s["fds"].append(out["fds_delta"] / n)
                s["after"].append(out["fds_after_delta"])
                out = _child(n, kind, True, arg)
                s["traced"].append(out["traced_delta_bytes"] / n / 1024)
        res.groups.append(Group(
            f"{KINDS[kind]}: total wall time", [
                Series(f"{n} at once", "ms", samples[n]["wall"]) for n in counts]))
        res.groups.append(Group(
            f"{KINDS[kind]}: parent memory per operation while all are in flight", [
                Series(f"{n} at once, RSS delta / n", "KiB", samples[n]["rss"])
                for n in counts] + [
                Series(f"{n} at once, tracemalloc / n", "KiB", samples[n]["traced"])
                for n in counts]))
        res.groups.append(Group(
            f"{KINDS[kind]}: fds", [
                Series(f"{n} at once, fds per operation", "fds", samples[n]["fds"])
                for n in counts] + [
                Series(f"{n} at once, fds left after", "fds", samples[n]["after"])
                for n in counts]))
        big = max(counts)
        mem = Group("", [Series("rss", "KiB", samples[big]["rss"]),
                         Series("traced", "KiB", samples[big]["traced"])])
        res.targets.append(Target(
            f"{kind}: parent RSS per operation at {big} at once (KiB)",
            mem.get("rss").median, 64, "<="))
        res.targets.append(Target(
            f"{kind}: parent traced Python memory per operation at {big} at once (KiB)",
            mem.get("traced").median, 64, "<="))
