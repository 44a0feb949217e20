"""Compiling the simulated host's C in tests: the libraries with other
flags (warnings at -O0..-O3, ASan) and the test driver (driver.c)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Sequence, Tuple

import pytest

from tests.support.fixtures import ROOT

SIMHOST = ROOT / "simhost"
SHARED_SOURCES = ["domain.c", "fault.c"]
# By library name (the soname depends on the release: releases.soname).
LIB_SOURCES = {
    "libxenctrl": ["ctrl.c", *SHARED_SOURCES],
    "libxenguest": ["guest.c", "save.c", "restore.c", *SHARED_SOURCES],
}
DRIVER = Path(__file__).resolve().parent / "driver.c"


def load_releases() -> ModuleType:
    """simhost/releases.py, the table setup.py builds from."""
    spec = importlib.util.spec_from_file_location("simhost_releases", SIMHOST / "releases.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RELEASES = load_releases()


def installed_release() -> str:
    """The release of the installed Xen headers ("4.17"), as setup.py reads it."""
    return str(RELEASES.release_of(pkg_config("--modversion", "xencontrol")[0]))


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


def lib_command(cc: str, lib: str, out: Path, flags: Sequence[str],
                release: str = "") -> List[str]:
    """The command that builds LIB ("libxenctrl") for RELEASE (default: the
    installed one) at OUT with FLAGS (optimisation, warnings, sanitizers) as
    setup.py does otherwise; its version script is written beside OUT."""
    release = release or installed_release()
    script = out.with_name(out.name + ".map")
    script.write_text(RELEASES.version_script(lib, release))
    return [cc, "-std=gnu11", *flags, "-D_GNU_SOURCE", "-fPIC", "-shared",
            f"-I{SIMHOST}", *RELEASES.c_defines(release), *xen_cflags(),
            *[str(SIMHOST / s) for s in LIB_SOURCES[lib]],
            "-o", str(out), f"-Wl,-soname,{RELEASES.soname(lib, release)}",
            f"-Wl,--version-script={script}",
            *pkg_config("--libs", "xentoollog")]


def build_driver(libdir: Path, out: Path) -> Path:
    """driver.c, linked to the simulated libraries in LIBDIR, plus its own
    copy of the fault parser (fault.c and what it uses, domain.c) for the
    parse-fault command."""
    cc = compiler()
    release = installed_release()
    subprocess.run([cc, "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-D_GNU_SOURCE", f"-I{SIMHOST}", *RELEASES.c_defines(release),
                    *xen_cflags(), str(DRIVER),
                    *[str(SIMHOST / s) for s in SHARED_SOURCES], "-o", str(out),
                    f"-L{libdir}", *[f"-l:{RELEASES.soname(lib, release)}" for lib in LIB_SOURCES],
                    *pkg_config("--libs", "xentoollog")], check=True)
    return out


def fake_xen(tmp_path: Path, version: str) -> Dict[str, str]:
    """A pkg-config directory that describes Xen VERSION: the installed
    headers, and as libxenctrl/libxenguest the simulated host's libraries
    built for VERSION's release (what linking against that Xen gives)."""
    pcdir, libdir = tmp_path / "pc", tmp_path / "lib"
    pcdir.mkdir()
    libdir.mkdir()
    names = {"libxenctrl": "xencontrol", "libxenguest": "xenguest"}
    release = ".".join(version.split(".")[:2])
    cflags = subprocess.run(["pkg-config", "--cflags", "xencontrol", "xenguest"],
                            capture_output=True, text=True, check=True).stdout.strip()
    for lib in LIB_SOURCES:
        if release in RELEASES.RELEASES:
            soname = RELEASES.soname(lib, release)
            subprocess.run(lib_command(compiler(), lib, libdir / soname, ["-O1"], release),
                           check=True)
            (libdir / f"{lib}.so").symlink_to(soname)
        (pcdir / f"{names[lib]}.pc").write_text(
            f"Name: {names[lib]}\nDescription: Xen {version} as a test sees it\n"
            f"Version: {version}\nCflags: {cflags}\n"
            f"Libs: -L{libdir} -l{lib[3:]}\nRequires.private: xentoollog\n")
    return dict(os.environ, PKG_CONFIG_PATH=str(pcdir))


def build_for_release(d: Path, release: str) -> Tuple[Path, Path]:
    """In D: the simulated libraries for RELEASE (D/lib) and xensr's helper
    built against them as setup.py builds it against that Xen (D/helper)."""
    env = fake_xen(d, f"{release}.0")
    helper = d / "helper"
    subprocess.run([sys.executable, "setup.py"], cwd=ROOT, check=True, capture_output=True,
                   env=dict(env, XENSR_HELPER_ONLY=str(helper)), timeout=300)
    return helper, d / "lib"
