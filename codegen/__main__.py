"""Command line of the generator: write or check the generated files."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codegen", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if any generated file is missing or differs")
    parser.add_argument("--root", default=ROOT,
                        help="project root the outputs are relative to")
    args = parser.parse_args(argv)

    stale = []
    for gen in generate():
        path = os.path.join(args.root, gen.path)
        try:
            with open(path, encoding="utf-8", newline="") as f:
                current: Optional[str] = f.read()
        except FileNotFoundError:
            current = None
        if current == gen.text:
            continue
        if args.check:
            stale.append((gen.path, "missing" if current is None else "stale or edited by hand"))
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(gen.text)
        os.replace(tmp, path)
        print(f"codegen: wrote {gen.path}")
    if stale:
        for path, why in stale:
            print(f"codegen: {path}: {why}; run `python -m codegen`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
