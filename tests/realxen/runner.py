"""One run of the tier for one Xen release: build (or reuse) the images,
boot once, collect results.

Each run keeps its console and results in ``<cache>/<release>/runs/<time>-<pid>/``
(``console.log``, ``results.json``, ``export.img``); ``<cache>/<release>/last-run``
points at the latest.  A run may be given an earlier run's ``export.img``
(another release's): dom0 sees it read-only at ``/import``.
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

# The disk dom0 writes for the next release's boot: an xl save file of the
# 128 MiB PV guest and a note of its counter.
EXPORT_MIB = 320


@dataclasses.dataclass
class Run:
    artifacts: images.Artifacts
    outcome: qemu.BootOutcome
    build_seconds: float
    export: Optional[Path]


def run_dir(rel: images.Release) -> Path:
    """A fresh directory for this run's console (runs may overlap); the
    newest few are kept and ``last-run`` points at the latest."""
    base = images.release_cache(rel)
    runs = base / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    d = runs / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}")
    d.mkdir()
    for old in sorted(runs.iterdir())[:-3]:
        shutil.rmtree(old, ignore_errors=True)
    link = base / "last-run"
    tmp = link.with_name(f".last-run-{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(d.relative_to(link.parent))
    tmp.replace(link)
    return d


def make_export_disk(path: Path) -> None:
    """An empty ext4 image (sparse) for dom0 to write to."""
    empty = path.with_name(".export-empty")
    empty.mkdir(exist_ok=True)
    images.run(["mkfs.ext4", "-q", "-F", "-L", "xensr-export", "-O", "^has_journal",
                "-E", "lazy_itable_init=1", "-d", str(empty), str(path), f"{EXPORT_MIB}M"],
               what="mkfs.ext4 export disk")
    empty.rmdir()


def run(release: str = "4.17", *, only: Optional[List[str]] = None,
        export: bool = False, imported: Optional[Path] = None,
        echo: Optional[Callable[[str], None]] = None,
        timeout: float = float(os.environ.get("XENSR_REALXEN_TIMEOUT", "900")),
        idle_timeout: float = float(os.environ.get("XENSR_REALXEN_IDLE_TIMEOUT", "120"))) -> Run:
    """Build and boot one release; raise images.Unavailable,
    images.BuildError or qemu.BootError on failure.  ``export``: give dom0
    a disk to write an xl save file to (``Run.export``), for ``imported``
    of a later run."""
    rel = images.RELEASES[release]
    t0 = time.monotonic()
    art = images.build_all(rel)
    build_seconds = time.monotonic() - t0
    images.log(f"Xen {rel.xen}: images ready in {build_seconds:.1f} s ({art.summary()})")
    d = run_dir(rel)
    export_img = d / "export.img"
    if export:
        make_export_disk(export_img)
    dom0_args = qemu.DOM0_ARGS
    if only:
        dom0_args += " xensr.scenarios=" + "+".join(only)
    console = d / "console.log"
    cmd = qemu.qemu_command(qemu=qemu.preflight(), xen=art.xen_elf, vmlinuz=art.vmlinuz,
                            initrd=art.dom0_initrd, root=art.root_img,
                            payload=art.payload_img, console=console, dom0_args=dom0_args,
                            export=export_img if export else None, imported=imported)
    (d / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    images.log(f"booting Xen {rel.xen} under QEMU (console: {console})")
    outcome = qemu.boot(cmd, console, timeout=timeout, idle_timeout=idle_timeout, log=echo)
    images.log(f"Xen {rel.xen}: boot done in {outcome.seconds:.1f} s")
    (d / "results.json").write_text(json.dumps({
        "release": rel.xen,
        "build_seconds": round(build_seconds, 1),
        "boot_seconds": round(outcome.seconds, 1),
        "stages": {k: round(v, 1) for k, v in outcome.stages.items()},
        "build": art.summary(),
        "versions": art.versions,
        "imported": str(imported) if imported else None,
        "results": {k: {"status": r.status, "details": r.details}
                    for k, r in outcome.results.items()},
    }, indent=1, sort_keys=True))
    return Run(art, outcome, build_seconds, export_img if export else None)


def releases() -> List[str]:
    """The releases a run covers: ``$XENSR_REALXEN_RELEASES`` (e.g. "4.20"
    or "4.17,4.20"), default all, oldest first."""
    env = os.environ.get("XENSR_REALXEN_RELEASES")
    if not env:
        return list(images.RELEASES)
    want = [r.strip() for r in env.split(",") if r.strip()]
    bad = [r for r in want if r not in images.RELEASES]
    if bad:
        raise ValueError(f"XENSR_REALXEN_RELEASES names unknown releases {bad} "
                         f"(known: {', '.join(images.RELEASES)})")
    return [r for r in images.RELEASES if r in want]
