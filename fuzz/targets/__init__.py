"""The fuzz targets, and what they share: how a finding is named.

Each target module has ``test_one_input(data)`` (raises on a finding) and
``main()`` (runs it under atheris/libFuzzer with libFuzzer's arguments).
:func:`run` wraps ``test_one_input`` so that every finding prints one
line, ``xensr-fuzz signature: ...``, naming what failed where: the
campaign groups findings by it.  A long campaign passes the signatures it
has already recorded in ``XENSR_FUZZ_KNOWN`` (a file, one a line) so that a
known finding is counted instead of ending the run; nothing else does.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The targets, by name: module under fuzz.targets.
TARGETS = ("callout", "stream", "helper")
SIGNATURE_PREFIX = "xensr-fuzz signature: "
KNOWN_PREFIX = "xensr-fuzz known: "


class Finding(AssertionError):
    """A check of a target failed; ``signature`` names the failure."""

    def __init__(self, signature: str, detail: str):
        super().__init__(f"{signature}: {detail}")
        self.signature = signature


def signature(exc: BaseException) -> str:
    """The exception's type and the innermost frame of xensr (or of the
    target) it came from: one signature per defect, whatever the input."""
    if isinstance(exc, Finding):
        return exc.signature
    where = "?"
    for fs in reversed(traceback.extract_tb(exc.__traceback__)):
        # Cython frames carry paths relative to the top of the tree.
        name = fs.filename
        rel = os.path.relpath(name, ROOT) if os.path.isabs(name) else name
        if rel.startswith(("xensr/", "fuzz/")):
            where = f"{rel}:{fs.name}"
            break
    return f"{type(exc).__name__} in {where}"


def _known() -> List[str]:
    path = os.environ.get("XENSR_FUZZ_KNOWN")
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def guarded(test_one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``test_one_input`` that names each finding, and counts those listed
    in XENSR_FUZZ_KNOWN instead of stopping."""
    known = set(_known())
    counts: Dict[str, int] = {}

    def wrapper(data: bytes) -> None:
        try:
            test_one_input(data)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            sig = signature(exc)
            if sig in known:
                # libFuzzer ends with exit(), before any Python atexit:
                # the count is printed as it goes (at powers of two).
                n = counts[sig] = counts.get(sig, 0) + 1
                if n & (n - 1) == 0:
                    print(f"{KNOWN_PREFIX}{n} {sig}", file=sys.stderr, flush=True)
                return
            print(f"\n{SIGNATURE_PREFIX}{sig}", file=sys.stderr, flush=True)
            raise
    return wrapper


def run(test_one_input: Callable[[bytes], None], argv: Optional[List[str]] = None) -> None:
    """Fuzz ``test_one_input`` with libFuzzer's command line ``argv``."""
    import atheris

    atheris.Setup(sys.argv if argv is None else argv, guarded(test_one_input))
    atheris.Fuzz()
