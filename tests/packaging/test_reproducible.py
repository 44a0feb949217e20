"""Reproducible builds: the same sources and SOURCE_DATE_EPOCH give the same
sdist and wheel bytes, whatever the build directory, umask and locale."""

import glob
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCH = "1700000000"


def build(source, outdir, umask, locale):
    """sdist and wheel of SOURCE (python -m build: the wheel from the sdist,
    unpacked in a directory of its own), in a process with UMASK and LOCALE."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, LC_ALL=locale, LANG=locale)
    script = f"import os, sys; os.umask({umask}); os.execv(sys.executable, sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", script, sys.executable, "-m", "build", "--no-isolation",
         "--outdir", str(outdir), str(source)],
        env=env, cwd=str(source), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds of the same sources, unpacked from one sdist of this tree
    into two unrelated directories."""
    top = tmp_path_factory.mktemp("repro")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir",
                    str(top / "seed"), ROOT], check=True, capture_output=True, timeout=600,
                   env=dict(os.environ, SOURCE_DATE_EPOCH=EPOCH))
    (seed,) = glob.glob(str(top / "seed" / "*.tar.gz"))
    trees = []
    for where in ("one", "second/and/deeper"):
        dest = top / where
        dest.mkdir(parents=True)
        with tarfile.open(seed) as tar:
            (name,) = {m.name.split("/")[0] for m in tar.getmembers()}
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
        trees.append(dest / name)
    procs = [build(trees[0], top / "out-one", 0o022, "C.UTF-8"),
             build(trees[1], top / "out-two", 0o002, "C")]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out.decode(errors="replace")[-3000:]
    return trees, [top / "out-one", top / "out-two"]


def artefacts(outdir):
    names = sorted(os.listdir(outdir))
    assert sorted(n.rsplit(".", 1)[-1] for n in names) == ["gz", "whl"], names
    return {n: (outdir / n).read_bytes() for n in names}


def test_sdist_and_wheel_are_identical_from_two_build_paths(builds):
    _, (one, two) = builds
    first, second = artefacts(one), artefacts(two)
    assert sorted(first) == sorted(second)
    for name in first:
        if first[name] != second[name] and name.endswith(".whl"):
            # Name the members that differ: that is where to look.
            with zipfile.ZipFile(one / name) as a, zipfile.ZipFile(two / name) as b:
                differ = [i.filename for i in a.infolist()
                          if i.filename not in b.namelist()
                          or a.read(i) != b.read(i.filename)
                          or i.external_attr != b.getinfo(i.filename).external_attr]
            pytest.fail(f"{name} differs between the two builds: {differ}")
        assert first[name] == second[name], f"{name} differs between the two builds"


def test_no_build_path_in_the_compiled_files(builds):
    """The cause, checked directly: neither build directory is written into
    the helper, the extension or the simulated libraries."""
    trees, (one, _) = builds
    (wheel,) = glob.glob(str(one / "*.whl"))
    with zipfile.ZipFile(wheel) as z:
        compiled = [n for n in z.namelist()
                    if n.endswith(".so") or ".so." in n or n.endswith("/xensr-save-helper")]
        assert len(compiled) == 4, compiled
        for name in compiled:
            data = z.read(name)
            for tree in trees:
                assert str(tree).encode() not in data, f"{name} holds {tree}"
            assert b"/build-via-sdist-" not in data, f"{name} holds the build's temporary path"


def test_sdist_members_are_sorted_owned_by_root_with_clamped_times(builds):
    _, (one, _) = builds
    (sdist,) = glob.glob(str(one / "*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
    assert all(m.uid == 0 and m.gid == 0 for m in members)
    assert all(m.mtime <= int(EPOCH) for m in members)
    assert all(m.mode in (0o644, 0o755) for m in members)
    with open(sdist, "rb") as f:
        header = f.read(10)
    # gzip header: no file name flag, the time is SOURCE_DATE_EPOCH.
    assert header[3] & 0x08 == 0
    assert int.from_bytes(header[4:8], "little") == int(EPOCH)
