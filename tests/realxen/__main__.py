"""Build the images, boot Xen under QEMU, run the scenarios, print the results.

    python -m tests.realxen [--release 4.17|4.20 ...] [--only NAME+NAME] [--console]

The same runs the pytest tier does, by hand, one boot per release (default:
every release, oldest first; each boot after the first gets the previous
one's export disk): useful to watch the console (``--console``) or to
iterate on one scenario (``--only``).  Exit status 0 when every scenario
that ran passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import images, qemu, runner


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.realxen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", action="append", choices=list(images.RELEASES),
                    help="a Xen release to boot (repeatable; default: all)")
    ap.add_argument("--only", help="scenario names joined with '+'")
    ap.add_argument("--console", action="store_true", help="echo the serial console")
    args = ap.parse_args(argv)
    try:
        qemu.preflight()
    except qemu.QemuUnavailable as exc:
        print(f"realxen: cannot run: {exc}", file=sys.stderr)
        return 2
    names = [r for r in images.RELEASES if r in (args.release or images.RELEASES)]
    bad = 0
    imported = None
    for i, name in enumerate(names):
        t0 = time.monotonic()
        try:
            run = runner.run(name, only=args.only.split("+") if args.only else None,
                             export=i + 1 < len(names), imported=imported,
                             echo=print if args.console else None)
        except images.Unavailable as exc:
            print(f"realxen: Xen {name} skipped: {exc}", file=sys.stderr)
            imported = None
            continue
        except (images.BuildError, qemu.BootError) as exc:
            print(f"realxen: Xen {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            bad += 1
            imported = None
            continue
        imported = run.export
        for r in run.outcome.results.values():
            print(f"{name} {r.status} {r.name} {json.dumps(r.details)}")
            bad += r.status == "FAIL"
        print(f"Xen {name} build: {run.artifacts.summary()}")
        print(f"Xen {name}: build {run.build_seconds:.1f} s, boot {run.outcome.seconds:.1f} s, "
              f"total {time.monotonic() - t0:.1f} s; console: {run.outcome.console}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
