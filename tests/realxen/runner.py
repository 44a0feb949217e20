"""One run of the tier: build (or reuse) the images, boot once, collect results.

Each run keeps its console and results in ``<cache>/runs/<time>-<pid>/``
(``console.log``, ``results.json``); ``<cache>/last-run`` points at the
latest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional

from . import images, qemu


@dataclasses.dataclass
class Run:
    artifacts: images.Artifacts
    outcome: qemu.BootOutcome
    build_seconds: float


def run_dir() -> Path:
    """A fresh directory for this run's console (runs may overlap); the
    newest few are kept and ``last-run`` points at the latest."""
    runs = images.cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    d = runs / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}")
    d.mkdir()
    for old in sorted(runs.iterdir())[:-4]:
        shutil.rmtree(old, ignore_errors=True)
    link = images.cache_dir() / "last-run"
    tmp = link.with_name(f".last-run-{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(d.relative_to(link.parent))
    tmp.replace(link)
    return d


def run(*, only: Optional[List[str]] = None,
        echo: Optional[Callable[[str], None]] = None,
        timeout: float = float(os.environ.get("XENSR_REALXEN_TIMEOUT", "900")),
        idle_timeout: float = float(os.environ.get("XENSR_REALXEN_IDLE_TIMEOUT", "120"))) -> Run:
    """Build and boot; raise images.BuildError or qemu.BootError on failure."""
    t0 = time.monotonic()
    art = images.build_all()
    build_seconds = time.monotonic() - t0
    images.log(f"images ready in {build_seconds:.1f} s ({art.summary()})")
    d = run_dir()
    d.mkdir(parents=True, exist_ok=True)
    dom0_args = qemu.DOM0_ARGS
    if only:
        dom0_args += " xensr.scenarios=" + "+".join(only)
    console = d / "console.log"
    cmd = qemu.qemu_command(qemu=qemu.preflight(), xen=art.xen_elf, vmlinuz=art.vmlinuz,
                            initrd=art.dom0_initrd, root=art.root_img,
                            payload=art.payload_img, console=console, dom0_args=dom0_args)
    (d / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    images.log(f"booting Xen under QEMU (console: {console})")
    outcome = qemu.boot(cmd, console, timeout=timeout, idle_timeout=idle_timeout, log=echo)
    images.log(f"boot done in {outcome.seconds:.1f} s")
    (d / "results.json").write_text(json.dumps({
        "build_seconds": round(build_seconds, 1),
        "boot_seconds": round(outcome.seconds, 1),
        "stages": {k: round(v, 1) for k, v in outcome.stages.items()},
        "build": art.summary(),
        "versions": art.versions,
        "results": {k: {"status": r.status, "details": r.details}
                    for k, r in outcome.results.items()},
    }, indent=1, sort_keys=True))
    return Run(art, outcome, build_seconds)
