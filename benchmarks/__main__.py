"""Run xensr's benchmarks, print a table, write JSON.

    python -m benchmarks [--quick] [--only NAME[,NAME...]] [--reps N] [--json PATH]

Names: roundtrip, decode, spawn, concurrency, datapath, inspect, downtime, callcost,
migrate-throughput, migrate-many.  The JSON goes to
benchmarks/results/<UTC time>.json and, with --json, to PATH as well.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
import traceback
from typing import Any, Callable, Dict, List

from .harness import HERE, CBuild, Result, loadavg, machine, render

NAMES = ("roundtrip", "decode", "spawn", "concurrency", "datapath", "inspect", "downtime",
         "callcost", "migrate-throughput", "migrate-many")


def _runners(args: argparse.Namespace, build: CBuild) -> Dict[str, Callable[[], Result]]:
    from . import (callcost, concurrency, datapath, decode, downtime, inspectspeed, migmany,
                   migthroughput, roundtrip, spawn)

    reps = args.reps or (3 if args.quick else 9)
    return {
        "roundtrip": lambda: roundtrip.run(build, args.quick, reps),
        "decode": lambda: decode.run(build, args.quick, reps),
        "spawn": lambda: spawn.run(build, args.quick, reps),
        "concurrency": lambda: concurrency.run(
            build, args.quick, max(3, reps // 3), args.conc_kinds),
        "datapath": lambda: datapath.run(build, args.quick, max(3, reps // 2)),
        "inspect": lambda: inspectspeed.run(args.quick, max(3, reps // 3)),
        "downtime": lambda: downtime.run(args.quick, max(3, reps // 3)),
        "callcost": lambda: callcost.run(build, args.quick, reps),
        "migrate-throughput": lambda: migthroughput.run(build, args.quick,
                                                        args.reps or (3 if args.quick else 5)),
        "migrate-many": lambda: migmany.run(build, args.quick, args.reps or 3),
    }


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="few repetitions and small sizes (for a smoke test)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only these ({', '.join(NAMES)}); repeat or comma-separate")
    p.add_argument("--reps", type=int, default=0,
                   help="repetitions per variant (default 9, or 3 with --quick)")
    p.add_argument("--json", metavar="PATH", help="also write the JSON here")
    p.add_argument("--conc-kinds", default="simhost,bench",
                   help="concurrency runs: simhost, bench or both (default simhost,bench)")
    args = p.parse_args(argv)
    only: List[str] = []
    for item in args.only:
        only += [x.strip() for x in item.split(",") if x.strip()]
    for name in only:
        if name not in NAMES:
            p.error(f"unknown benchmark {name!r} (known: {', '.join(NAMES)})")
    args.only = only or list(NAMES)
    args.conc_kinds = [k for k in args.conc_kinds.split(",") if k]
    for k in args.conc_kinds:
        if k not in ("simhost", "bench"):
            p.error(f"unknown --conc-kinds entry {k!r}")
    if args.reps < 0:
        p.error("--reps must be positive")
    return args


def main(argv: List[str]) -> int:
    args = parse(argv)
    info: Dict[str, Any] = machine()
    info["command"] = "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv)
    info["started"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    results: List[Result] = []
    failures: Dict[str, str] = {}
    with CBuild() as build:
        runners = _runners(args, build)
        for name in args.only:
            t0 = time.monotonic()
            print(f"running {name} (load {loadavg():.2f}) ...", file=sys.stderr, flush=True)
            try:
                res = runners[name]()
            except Exception:
                failures[name] = traceback.format_exc()
                print(f"{name} FAILED:\n{failures[name]}", file=sys.stderr, flush=True)
                continue
            res.params["seconds"] = round(time.monotonic() - t0, 1)
            results.append(res)
    info["loadavg_at_end"] = loadavg()
    print(render(results, info))
    for name, tb in failures.items():
        print(f"\n== {name}: FAILED\n{tb.rstrip()}")
    doc = {
        "machine": info,
        "results": [r.as_dict() for r in results],
        "failed": failures,
    }
    resdir = os.path.join(HERE, "results")
    os.makedirs(resdir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    paths = [os.path.join(resdir, f"{stamp}.json")]
    if args.json:
        paths.append(args.json)
    for path in paths:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    print(f"\nJSON: {', '.join(paths)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
