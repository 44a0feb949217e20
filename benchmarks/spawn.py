"""3. Spawn latency as the parent's resident memory grows.

One child process per size (benchmarks/spawnchild.py) touches that much
memory and then times each way of starting the helper, interleaved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List

from .harness import ROOT, BenchError, CBuild, Group, Result, Series, Target

VARIANTS = ("xensr Callout (low level)", "xensr save_domain", "os.posix_spawn",
            "os.fork + os.execve", "subprocess.Popen")
CALLS = (VARIANTS[0],) + VARIANTS[2:]


def run(build: CBuild, quick: bool, reps: int) -> Result:
    helper = build.bench_helper()
    sizes_mib: List[int] = [64, 256] if quick else [256, 2048, 6144]
    res = Result("spawn", "spawn latency vs parent resident memory",
                 params={"sizes_mib": sizes_mib, "reps": reps})
    for size in sizes_mib:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.spawnchild", str(size), str(reps), helper],
            capture_output=True, text=True, cwd=ROOT,
        )
        if proc.returncode:
            raise BenchError(f"spawn benchmark at {size} MiB failed:\n{proc.stderr}")
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        rss_gib = data["rss_mib"] / 1024
        group = Group(
            f"parent RSS {rss_gib:.2f} GiB: spawn, one complete exchange, reap",
            [Series(v, "ms", data["total_ms"][v]) for v in VARIANTS],
            baseline="os.posix_spawn",
        )
        res.groups.append(group)
        calls = Group(
            f"parent RSS {rss_gib:.2f} GiB: time inside the spawn call alone",
            [Series(v, "ms", data["spawn_call_ms"][v]) for v in CALLS],
            baseline="os.posix_spawn",
        )
        res.groups.append(calls)
        res.targets.append(Target(
            f"xensr Callout / posix_spawn at {rss_gib:.2f} GiB",
            group.ratio("xensr Callout (low level)"), 1.2, "<="))
        res.targets.append(Target(
            f"xensr save_domain / posix_spawn at {rss_gib:.2f} GiB",
            group.ratio("xensr save_domain"), 1.2, "<="))
    res.notes.append(
        "every sample is one trivial operation against a bench helper that "
        "completes at once: spawn, read its complete frame, reply, reap. "
        "'xensr Callout' drives the callout's _xc.Callout directly (its spawn "
        "entry point, exit through the pidfd); 'xensr save_domain' is the whole "
        "public call; the others do the exchange by hand. The spawn-call rows "
        "time Callout.spawn / os.posix_spawn / os.fork / Popen() alone")
    res.notes.append(
        "memory: an anonymous mapping with MADV_NOHUGEPAGE, every page written, "
        "in a fresh process per size")
    return res
