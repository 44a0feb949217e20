"""Compiling the simulated host's C in tests: the libraries with other
flags (warnings at -O0..-O3, ASan) and the test driver (driver.c)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Sequence

import pytest

from tests.support.fixtures import ROOT

SIMHOST = ROOT / "simhost"
SHARED_SOURCES = ["domain.c", "fault.c"]
LIB_SOURCES = {
    "libxenctrl.so.4.17": ["ctrl.c", *SHARED_SOURCES],
    "libxenguest.so.4.17": ["guest.c", "save.c", "restore.c", *SHARED_SOURCES],
}
DRIVER = Path(__file__).resolve().parent / "driver.c"


def compiler() -> str:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None or shutil.which("pkg-config") is None:
        pytest.skip("no C compiler / pkg-config")
    return cc


def pkg_config(*args: str) -> List[str]:
    return subprocess.run(["pkg-config", *args], check=True, capture_output=True,
                          text=True).stdout.split()


def xen_cflags() -> List[str]:
    return pkg_config("--cflags", "xencontrol", "xenguest", "xentoollog")


def lib_command(cc: str, lib: str, out: Path, flags: Sequence[str]) -> List[str]:
    """The command that builds LIB at OUT with FLAGS (optimisation, warnings,
    sanitizers) as setup.py does otherwise."""
    return [cc, "-std=gnu11", *flags, "-D_GNU_SOURCE", "-fPIC", "-shared",
            f"-I{SIMHOST}", *xen_cflags(), *[str(SIMHOST / s) for s in LIB_SOURCES[lib]],
            "-o", str(out), f"-Wl,-soname,{lib}",
            f"-Wl,--version-script={SIMHOST / 'vers.map'}",
            *pkg_config("--libs", "xentoollog")]


def build_driver(libdir: Path, out: Path) -> Path:
    """driver.c, linked to the simulated libraries in LIBDIR, plus its own
    copy of the fault parser (fault.c and what it uses, domain.c) for the
    parse-fault command."""
    cc = compiler()
    subprocess.run([cc, "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-D_GNU_SOURCE", f"-I{SIMHOST}", *xen_cflags(), str(DRIVER),
                    *[str(SIMHOST / s) for s in SHARED_SOURCES], "-o", str(out),
                    f"-L{libdir}", "-l:libxenctrl.so.4.17", "-l:libxenguest.so.4.17",
                    *pkg_config("--libs", "xentoollog")], check=True)
    return out
