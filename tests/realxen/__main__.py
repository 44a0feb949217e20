"""Build the images, boot Xen under QEMU, run the scenarios, print the results.

    python -m tests.realxen [--only NAME+NAME] [--console]

The same run the pytest tier does, by hand: useful to watch the console
(``--console``) or to iterate on one scenario (``--only``).  Exit status 0
when every scenario that ran passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import images, qemu, runner


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.realxen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="scenario names joined with '+'")
    ap.add_argument("--console", action="store_true", help="echo the serial console")
    args = ap.parse_args(argv)
    try:
        qemu.preflight()
    except qemu.QemuUnavailable as exc:
        print(f"realxen: cannot run: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        run = runner.run(only=args.only.split("+") if args.only else None,
                         echo=print if args.console else None)
    except (images.BuildError, qemu.BootError) as exc:
        print(f"realxen: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    bad = 0
    for r in run.outcome.results.values():
        print(f"{r.status} {r.name} {json.dumps(r.details)}")
        bad += not r.passed
    print(f"build: {run.artifacts.summary()}")
    print(f"build {run.build_seconds:.1f} s, boot {run.outcome.seconds:.1f} s, "
          f"total {time.monotonic() - t0:.1f} s; console: {run.outcome.console}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
