"""The simulated host's libraries: sonames, symbol versions, exports,
warnings, and that Debian's helper binds to them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.simhost.cbuild import LIB_SOURCES, compiler, lib_command
from tests.support.fixtures import ROOT

EXPORTS = {
    "libxenctrl.so.4.17": {"xc_interface_open", "xc_interface_close"},
    "libxenguest.so.4.17": {"xc_domain_save", "xc_domain_restore"},
}


def readelf(*args) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run(["readelf", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.parametrize("lib", sorted(EXPORTS))
def test_soname_needed_and_exports(simhost_libs, lib):
    path = simhost_libs / lib
    dyn = readelf("-d", str(path))
    assert f"Library soname: [{lib}]" in dyn
    needed = set(re.findall(r"Shared library: \[([^\]]+)\]", dyn))
    assert needed == {"libxentoollog.so.1", "libc.so.6"}
    assert "RUNPATH" not in dyn and "RPATH" not in dyn
    syms = readelf("--dyn-syms", "-W", str(path))
    defined = set()
    for line in syms.splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[6] != "UND" and cols[4] == "GLOBAL":
            defined.add(cols[7])
    assert defined == {f"{name}@@VERS_4.17.0" for name in EXPORTS[lib]} | {"VERS_4.17.0"}


def test_debian_helper_binds_to_the_simulated_libraries(debian_helper, simhost_libs, simulated_host):
    """Debian's helper has no RUNPATH; with the simulated libraries first in
    LD_LIBRARY_PATH its four libxc imports bind to them at VERS_4.17.0,
    its xentoollog imports to the real libxentoollog."""
    assert "RUNPATH" not in readelf("-d", str(debian_helper))
    env = dict(simulated_host.env, LD_DEBUG="bindings", LD_BIND_NOW="1")
    p = subprocess.run([str(debian_helper)], env=env, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == -6          # no argv: the helper asserts
    found = {}
    for m in re.finditer(r"binding file \S*libxl-save-helper \[0\] to (\S+) \[0\]: "
                         r"normal symbol `(\w+)' \[(\S+)\]", p.stderr):
        found[m.group(2)] = (os.path.realpath(m.group(1)), m.group(3))
    for lib, names in EXPORTS.items():
        for name in names:
            assert found[name] == (str((simhost_libs / lib).resolve()), "VERS_4.17.0")
    for name in ("xtl_log", "xtl_logv"):
        path, version = found[name]
        assert "libxentoollog.so.1" in path and version == "VERS_1.0"


@pytest.mark.parametrize("opt", ["-O0", "-O2", "-O3"])
def test_builds_with_warnings_as_errors(tmp_path, opt):
    """Both libraries build warning-free with -Wall -Wextra -Werror."""
    cc = compiler()
    for out in LIB_SOURCES:
        cmd = lib_command(cc, out, tmp_path / out,
                          [opt, "-Wall", "-Wextra", "-Werror", "-Wl,-z,defs"])
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert p.stderr == ""


def test_setup_py_lists_the_simhost_sources():
    """setup.py builds these sources and no others from simhost/ (so the
    test above covers what ships)."""
    text = (ROOT / "setup.py").read_text()
    listed = set(re.findall(r'"simhost/([\w.]+\.c)"', text))
    assert listed == {src for sources in LIB_SOURCES.values() for src in sources}
    assert {p.name for p in (ROOT / "simhost").glob("*.c")} == listed
    assert '"simhost/vers.map"' in text
