"""The build: Xen found through pkg-config, a clear message when it is not."""

import os
import re
import subprocess
import sys

from tests.simhost.cbuild import fake_xen

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_missing_libxen_dev_names_the_package(tmp_path):
    # An empty pkg-config search path stands for a machine without libxen-dev.
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path), PKG_CONFIG_PATH="")
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "b"),
                        "--build-temp", str(tmp_path / "t")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "apt-get install libxen-dev" in r.stderr
    assert "xencontrol" in r.stderr
    # The message names the packages; pkg-config's own options stay out of it.
    assert "--print-errors" not in r.stderr
    assert "--exists" not in r.stderr
    assert not (tmp_path / "b").exists()  # nothing was built


def test_pkg_config_finds_xen():
    r = subprocess.run(["pkg-config", "--libs", "xencontrol", "xenguest", "xentoollog"],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert set(r.stdout.split()) >= {"-lxenctrl", "-lxenguest", "-lxentoollog"}


def build(tmp_path, env):
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib",
                           str(tmp_path / "b"), "--build-temp", str(tmp_path / "t")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def needed(path):
    dyn = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return sorted(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn))


def test_builds_for_the_xen_pkg_config_reports(tmp_path):
    """Against a Xen 4.20 (as pkg-config describes it), the helper links
    only 4.20's libraries, the simulated host carries 4.20's names and
    xensr/_build.py says 4.20."""
    r = build(tmp_path, fake_xen(tmp_path, "4.20.0"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "b" / "xensr"
    assert needed(out / "bin" / "xensr-save-helper") == [
        "libc.so.6", "libxenctrl.so.4.20", "libxenguest.so.4.20", "libxentoollog.so.1"]
    assert sorted(p.name for p in (out / "_simhost").iterdir()) == [
        "libxenctrl.so.4.20", "libxenguest.so.4.20"]
    info = {}
    exec((out / "_build.py").read_text(), info)
    assert info["XEN_VERSION"] == "4.20"
    assert info["HELPER_XEN_LIBRARIES"] == ("libxenctrl.so.4.20", "libxenguest.so.4.20")


def test_unknown_xen_release_is_refused_before_building(tmp_path):
    r = build(tmp_path, fake_xen(tmp_path, "4.16.0"))
    assert r.returncode != 0
    assert "Xen 4.16.0 is not one xensr knows (4.17, 4.18, 4.19, 4.20, 4.21)" in r.stderr
    assert not (tmp_path / "b").exists()


def test_built_tree_reports_its_xen():
    """xensr.XEN_VERSION and `xensr --version` name the installed release."""
    import xensr

    modversion = subprocess.run(["pkg-config", "--modversion", "xencontrol"],
                                capture_output=True, text=True, check=True).stdout
    assert xensr.XEN_VERSION == ".".join(modversion.split(".")[:2])
    r = subprocess.run([sys.executable, "-m", "xensr", "--version"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0
    assert r.stdout == f"xensr {xensr.__version__} (built for Xen {xensr.XEN_VERSION})\n"
