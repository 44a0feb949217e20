"""The build: Xen found through pkg-config, a clear message when it is not."""

import os
import subprocess
import sys

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
