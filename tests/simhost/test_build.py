"""The simulated host's libraries: sonames, symbol versions, exports,
warnings, and that Debian's helper binds to them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.simhost.cbuild import LIB_SOURCES, RELEASES, compiler, lib_command
from tests.support.fixtures import ROOT, XEN_RELEASE

EXPORTS = {
    "libxenctrl": {"xc_interface_open", "xc_interface_close"},
    "libxenguest": {"xc_domain_save", "xc_domain_restore"},
}
# Each release's real names (XEN-VERSIONS: Debian 12's and 13's readelf -V,
# Xen's libs.mk for the others), written out here rather than derived, so
# that the table in simhost/releases.py is checked against them.
REAL_NAMES = {
    "4.17": ("libxenctrl.so.4.17", "VERS_4.17.0", "libxenguest.so.4.17", "VERS_4.17.0"),
    "4.18": ("libxenctrl.so.4.18", "libxenctrl_4.18.0", "libxenguest.so.4.18", "libxenguest_4.18.0"),
    "4.19": ("libxenctrl.so.4.19", "libxenctrl_4.19.0", "libxenguest.so.4.19", "libxenguest_4.19.0"),
    "4.20": ("libxenctrl.so.4.20", "libxenctrl_4.20.0", "libxenguest.so.4.20", "libxenguest_4.20.0"),
    "4.21": ("libxenctrl.so.4.21", "libxenctrl_4.21.0", "libxenguest.so.4.21", "libxenguest_4.21.0"),
}


def readelf(*args) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run(["readelf", *args], check=True, capture_output=True,
                          text=True).stdout


def check_library(path, soname, node, exports):
    """PATH has SONAME, needs only libxentoollog and libc, and exports
    exactly EXPORTS at NODE."""
    dyn = readelf("-d", str(path))
    assert f"Library soname: [{soname}]" in dyn
    needed = set(re.findall(r"Shared library: \[([^\]]+)\]", dyn))
    assert needed == {"libxentoollog.so.1", "libc.so.6"}
    assert "RUNPATH" not in dyn and "RPATH" not in dyn
    syms = readelf("--dyn-syms", "-W", str(path))
    defined = set()
    for line in syms.splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[6] != "UND" and cols[4] == "GLOBAL":
            defined.add(cols[7])
    assert defined == {f"{name}@@{node}" for name in exports} | {node}


@pytest.mark.parametrize("lib", sorted(EXPORTS))
def test_soname_needed_and_exports(simhost_libs, lib):
    """The built libraries carry the installed release's names."""
    soname = RELEASES.soname(lib, XEN_RELEASE)
    check_library(simhost_libs / soname, soname, RELEASES.node(lib, XEN_RELEASE), EXPORTS[lib])


def test_release_table_has_the_real_names():
    assert set(RELEASES.RELEASES) == set(REAL_NAMES)
    for release, names in REAL_NAMES.items():
        assert (RELEASES.soname("libxenctrl", release), RELEASES.node("libxenctrl", release),
                RELEASES.soname("libxenguest", release),
                RELEASES.node("libxenguest", release)) == names, release


@pytest.mark.parametrize("release", sorted(REAL_NAMES))
def test_every_release_builds_with_its_names(tmp_path, release):
    """setup.py's command for each release in the table gives libraries with
    that release's soname and node (built here against the installed
    headers, whose API simhost uses the same way in every release)."""
    cc = compiler()
    for lib in LIB_SOURCES:
        soname = RELEASES.soname(lib, release)
        cmd = lib_command(cc, lib, tmp_path / soname, ["-O1", "-Wall", "-Werror"], release)
        subprocess.run(cmd, check=True)
        check_library(tmp_path / soname, soname, RELEASES.node(lib, release), EXPORTS[lib])


def test_release_of_reads_pkg_config_versions():
    assert RELEASES.release_of("4.20.0\n") == "4.20"
    assert RELEASES.release_of("4.17") == "4.17"
    for bad in ("4.16.0", "4.22.0", "5.0.0", ""):
        with pytest.raises(ValueError, match="not one xensr knows"):
            RELEASES.release_of(bad)


def test_debian_helper_binds_to_the_simulated_libraries(debian_helper, simhost_libs, simulated_host):
    """Debian's helper has no RUNPATH; with the simulated libraries first in
    LD_LIBRARY_PATH its four libxc imports bind to them at the release's nodes,
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
        path = simhost_libs / RELEASES.soname(lib, XEN_RELEASE)
        for name in names:
            assert found[name] == (str(path.resolve()), RELEASES.node(lib, XEN_RELEASE))
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
    assert "RELEASES.version_script(lib, release)" in text
