"""The wheel: built from this tree, installed in a fresh venv, used from outside it."""

import glob
import hashlib
import os
import re
import stat
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

from xensr import XEN_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_LIBDIR = "/usr/lib/x86_64-linux-gnu"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # The sdist is built first and the wheel from it, so this also proves
    # the sdist holds everything the build needs.
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), ROOT],
                   check=True, capture_output=True, timeout=600)
    wheels = glob.glob(str(out / "*.whl"))
    sdists = glob.glob(str(out / "*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    return wheels[0]


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    where = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                    "--no-deps", dist], check=True, timeout=300)
    return where


def package_version():
    """xensr.__version__ as written in the source: the one version."""
    with open(os.path.join(ROOT, "xensr", "__init__.py")) as f:
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
    assert m, "no __version__ literal in xensr/__init__.py"
    return m.group(1)


def test_wheel_and_sdist_carry_the_package_version(dist):
    version = package_version()
    assert os.path.basename(dist).startswith(f"xensr-{version}-")
    assert os.path.exists(os.path.join(os.path.dirname(dist), f"xensr-{version}.tar.gz"))
    with zipfile.ZipFile(dist) as z:
        metadata = z.read(f"xensr-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata


def test_sdist_carries_the_protocol_document(dist):
    """Code and tests in the sdist cite docs/protocol.md; it must be there."""
    sdist = os.path.join(os.path.dirname(dist), f"xensr-{package_version()}.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert f"xensr-{package_version()}/docs/protocol.md" in names


def test_wheel_contents(dist):
    with zipfile.ZipFile(dist) as z:
        infos = {i.filename: i for i in z.infolist()}
    mode = {name: (i.external_attr >> 16) for name, i in infos.items()}
    helper = "xensr/bin/xensr-save-helper"
    assert helper in infos and mode[helper] & 0o777 == 0o755
    assert any(n.startswith("xensr/_xc.") and n.endswith(".so") for n in infos)
    assert "xensr/py.typed" in infos and "xensr/_xc.pyi" in infos
    libs = sorted(n for n in infos if ".so" in os.path.basename(n) and not n.startswith("xensr/_xc."))
    # Only the simulated host's two libraries; never a host libxen* library.
    assert libs == [f"xensr/_simhost/libxenctrl.so.{XEN_VERSION}",
                    f"xensr/_simhost/libxenguest.so.{XEN_VERSION}"]
    # The Xen it was built for, which xensr.XEN_VERSION reads.
    assert "xensr/_build.py" in infos
    with zipfile.ZipFile(dist) as z:
        assert f"XEN_VERSION = {XEN_VERSION!r}" in z.read("xensr/_build.py").decode()
    with zipfile.ZipFile(dist) as z:
        for name in libs:
            data = z.read(name)
            host = os.path.join(HOST_LIBDIR, os.path.basename(name))
            if os.path.exists(host):
                with open(host, "rb") as f:
                    assert hashlib.sha256(f.read()).digest() != hashlib.sha256(data).digest()
            assert b"bad fault" in data  # the simulated host's own library (fault.c)


def test_wheel_carries_the_manual_pages_and_no_bytecode(dist):
    """One page per subcommand plus the command's, as data files (installed
    under <prefix>/share/man/man1); nothing compiled by the build's own
    imports of the package."""
    from xensr import _manpage

    with zipfile.ZipFile(dist) as z:
        names = z.namelist()
    prefix = f"xensr-{package_version()}.data/data/share/man/man1/"
    assert sorted(n[len(prefix):] for n in names if n.startswith(prefix)) == sorted(_manpage.pages())
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_wheel_has_the_man_pages(venv):
    page = venv / "share" / "man" / "man1" / "xensr.1"
    assert page.is_file() and page.read_text().startswith('.TH "XENSR" "1"')


def run_outside(venv, *args, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XENSR_"))}
    env.update(kw.pop("env", {}))
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd="/", env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def test_demo_from_installed_wheel(venv):
    r = run_outside(venv, "xensr", "demo", "--memory", "48", "--dirty-pages", "512")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "memory: IDENTICAL" in r.stdout
    assert "precopy rounds:" in r.stdout


def test_installed_wheel_reports_its_xen(venv):
    r = run_outside(venv, "xensr", "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(f"(built for Xen {XEN_VERSION})\n")


SCRIPT = textwrap.dedent("""
    import os, sys, tempfile, xensr
    from xensr.testing import SimulatedHost
    assert xensr.__file__.startswith(sys.prefix), xensr.__file__
    assert xensr.helper_path().startswith(sys.prefix)
    with SimulatedHost(auto_suspend=True) as host, tempfile.TemporaryDirectory() as tmp:
        src = host.create_domain(16, kind="hvm")
        path = os.path.join(tmp, "f")
        with open(path, "wb") as f:
            xensr.save_domain(src, f, env=host.env, live=True)
        dst = host.create_empty_domain()
        with open(path, "rb") as f:
            res = xensr.restore_domain(dst, f, store_evtchn=1, console_evtchn=2, env=host.env)
        assert host.memory_digest(src) == host.memory_digest(dst)
        print("OK", res.store_gfn, res.console_gfn)
""")


def test_save_restore_from_installed_wheel(venv):
    r = run_outside(venv, "python", "-c", SCRIPT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK ")


def test_helper_without_exec_bit_is_a_clear_error(venv):
    helper = glob.glob(str(venv / "lib" / "python*" / "site-packages" / "xensr" / "bin" /
                           "xensr-save-helper"))[0]
    os.chmod(helper, 0o644)
    try:
        r = run_outside(venv, "python", "-c", textwrap.dedent("""
            import xensr
            try:
                xensr.helper_path()
            except xensr.HelperStartError as e:
                print("HelperStartError", e.errno, e)
        """))
    finally:
        os.chmod(helper, 0o755)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HelperStartError 13 "), r.stdout
    assert "xensr-save-helper" in r.stdout and "executable" in r.stdout
    assert stat.S_IMODE(os.stat(helper).st_mode) == 0o755
