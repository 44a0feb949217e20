"""The image builder's pieces that need neither root nor the network (fast)."""

from __future__ import annotations

import gzip
import shutil
import stat
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

from . import images


def elf_module(path: Path, modinfo: bytes) -> None:
    """A minimal ELF64 relocatable with a .modinfo section, like a .ko."""
    shstrtab = b"\0.shstrtab\0.modinfo\0"
    data_off = 64
    body = shstrtab + modinfo
    shoff = data_off + len(body)
    shoff += -shoff % 8
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    sections = [
        struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, data_off, len(shstrtab), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 11, 1, 2, 0, data_off + len(shstrtab), len(modinfo),
                    0, 0, 1, 0),
    ]
    blob = ehdr + body
    blob += bytes(shoff - len(blob))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob + b"".join(sections))


def test_modinfo_and_module_closure_in_load_order(tmp_path):
    mods = tmp_path / "lib" / "modules" / "6.1.0-test"
    k = mods / "kernel"
    elf_module(k / "fs/ext4/ext4.ko", b"license=GPL\0depends=mbcache,jbd2,crc16\0name=ext4\0")
    elf_module(k / "fs/jbd2/jbd2.ko", b"depends=\0name=jbd2\0")
    elf_module(k / "fs/mbcache.ko", b"depends=\0name=mbcache\0")
    elf_module(k / "drivers/xen/xen-evtchn.ko", b"depends=\0name=xen_evtchn\0")
    (mods / "modules.builtin").write_text("kernel/lib/crc16.ko\n")
    assert images.modinfo(k / "fs/ext4/ext4.ko")["depends"] == ["mbcache,jbd2,crc16"]
    order = [p.name for p in images.module_closure(mods, ["ext4", "xen_evtchn", "jbd2"])]
    # dependencies first, each once, built-in crc16 left out, - and _ alike
    assert order == ["mbcache.ko", "jbd2.ko", "ext4.ko", "xen-evtchn.ko"]
    with pytest.raises(images.BuildError, match="virtio_blk not found"):
        images.module_closure(mods, ["virtio_blk"])
    with pytest.raises(images.BuildError, match="no .modinfo"):
        (k / "bad.ko").write_bytes(b"\x7fELF" + bytes([2, 1, 1]) + bytes(57))
        images.modinfo(k / "bad.ko")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_cpio_archive_lists_files_links_and_device_nodes(tmp_path):
    c = images.Cpio()
    c.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    c.symlink("bin/sh", "tool")
    c.chardev("dev/console", 5, 1)
    c.dir("newroot")
    gz = tmp_path / "initrd.gz"
    images.write_gz(gz, c.finish())
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=gzip.decompress(gz.read_bytes()),
                             capture_output=True, check=True).stdout.decode()
    lines = {ln.split()[-1] if "->" not in ln else ln.split()[-3]: ln
             for ln in listing.splitlines()}
    assert lines["bin/tool"].startswith("-rwxr-xr-x")
    assert lines["bin/sh"].startswith("lrwxrwxrwx") and "-> tool" in lines["bin/sh"]
    assert lines["dev/console"].startswith("crw-------") and "5,   1" in lines["dev/console"]
    assert lines["bin"].startswith("drwxr-xr-x") and lines["newroot"].startswith("d")
    # extracting gives the file back byte for byte
    subprocess.run(["cpio", "-id", "--quiet", "bin/tool"], input=gzip.decompress(gz.read_bytes()),
                   cwd=tmp_path, check=True)
    assert (tmp_path / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"


def test_unpack_wheel_keeps_the_helper_executable(tmp_path):
    whl = tmp_path / "xensr-0.1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(whl, "w") as z:
        info = zipfile.ZipInfo("xensr/bin/xensr-save-helper")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        z.writestr(info, b"\x7fELF...")
        z.writestr("xensr/__init__.py", "")
    images.unpack_wheel(whl, tmp_path / "site")
    helper = tmp_path / "site/xensr/bin/xensr-save-helper"
    assert helper.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "site/xensr/__init__.py").stat().st_mode & 0o777 == 0o644


def test_stage_builds_once_per_key_and_drops_stale_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("XENSR_REALXEN_CACHE", str(tmp_path))
    monkeypatch.setitem(images.RECIPE, "unit", 1)
    built = []

    def build(out: Path) -> None:
        built.append(out)
        (out / "artifact").write_text("x")

    a = images.stage("unit", {"v": 1}, build)
    again = images.stage("unit", {"v": 1}, build)
    assert a.built and not again.built and again.path == a.path and len(built) == 1
    assert (a.path / "artifact").read_text() == "x"
    b = images.stage("unit", {"v": 2}, build)
    assert b.path != a.path and not a.path.exists() and len(built) == 2

    def broken(out: Path) -> None:
        (out / "half").write_text("")
        raise images.BuildError("broke")

    with pytest.raises(images.BuildError):
        images.stage("unit", {"v": 3}, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [b.path.name]  # no half entry


def test_mirror_comes_from_apt_or_the_environment(monkeypatch):
    """The images use the Debian mirror this machine's apt uses (no mirror
    is written into the project); the environment overrides it."""
    listing = ("http://mirror.example/debian-security/ bookworm-security\n"
               "http://mirror.example/debian/ bookworm\n")
    monkeypatch.setattr(images, "run", lambda cmd, **kw: listing)
    images._apt_targets.cache_clear()
    monkeypatch.delenv("XENSR_REALXEN_MIRROR", raising=False)
    monkeypatch.delenv("XENSR_REALXEN_SECURITY_MIRROR", raising=False)
    try:
        bookworm = images.RELEASES["4.17"]
        assert images.mirror(bookworm) == "http://mirror.example/debian"
        assert images.security_mirror(bookworm) == "http://mirror.example/debian-security"
        # Another release's suite comes from this machine's archives.
        monkeypatch.setattr(images, "host_suite", lambda: "bookworm")
        trixie = images.RELEASES["4.20"]
        assert images.mirror(trixie) == "http://mirror.example/debian"
        assert images.security_mirror(trixie) == "http://mirror.example/debian-security"
        monkeypatch.setenv("XENSR_REALXEN_MIRROR", "http://other.example/debian")
        assert images.mirror(bookworm) == "http://other.example/debian"
        monkeypatch.setattr(images, "run", lambda cmd, **kw: "")
        images._apt_targets.cache_clear()
        with pytest.raises(images.BuildError, match="no Debian mirror"):
            images.security_mirror(bookworm)
    finally:
        images._apt_targets.cache_clear()


def test_compressed_modules_are_found_and_decompressed(tmp_path):
    """Debian 13's modules are .ko.xz: found by name, read decompressed
    (busybox's insmod takes plain ELF only)."""
    import lzma

    mods = tmp_path / "lib" / "modules" / "6.12.0-test"
    plain = tmp_path / "plain"
    elf_module(plain / "xen-privcmd.ko", b"depends=\0name=xen_privcmd\0")
    (mods / "kernel/drivers/xen").mkdir(parents=True)
    (mods / "kernel/drivers/xen/xen-privcmd.ko.xz").write_bytes(
        lzma.compress((plain / "xen-privcmd.ko").read_bytes(), format=lzma.FORMAT_XZ))
    (found,) = images.module_closure(mods, ["xen_privcmd"])
    assert images.module_name(found) == "xen_privcmd"
    assert images.module_bytes(found) == (plain / "xen-privcmd.ko").read_bytes()
    out = tmp_path / "out"
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.12.0-test").write_bytes(b"kernel")
    monkey = images.DOM0_MODULES
    try:
        images.DOM0_MODULES = ["xen_privcmd"]
        images.extract_kernel(tmp_path, out)
    finally:
        images.DOM0_MODULES = monkey
    assert (out / "modules.order").read_text() == "xen_privcmd.ko\n"
    assert (out / "modules/xen_privcmd.ko").read_bytes()[:4] == b"\x7fELF"
    assert (out / "release").read_text() == "6.12.0-test\n"


def test_a_release_without_its_debian_is_unavailable(tmp_path, monkeypatch):
    """Xen 4.20 on a Debian 12 machine comes from the Debian 13 root; with
    none, the release is Unavailable (the tier skips it, saying why)."""
    monkeypatch.setattr(images, "host_suite", lambda: "bookworm")
    monkeypatch.setattr(images, "REPO", tmp_path)
    assert images.debian_root(images.RELEASES["4.17"]) is None
    with pytest.raises(images.Unavailable, match="Debian 13 root"):
        images.debian_root(images.RELEASES["4.20"])
    root = tmp_path / ".cache/debian13/root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_CODENAME=trixie\n")
    (root / ".xensr-ready").write_text("")
    assert images.debian_root(images.RELEASES["4.20"]) == root
    cmd = images.in_root(root, ["apt-cache", "show", "x"])
    assert cmd[:2] == ["chroot", str(root)] and cmd[-3:] == ["apt-cache", "show", "x"]


def test_releases_from_the_environment(monkeypatch):
    from . import runner

    monkeypatch.delenv("XENSR_REALXEN_RELEASES", raising=False)
    assert runner.releases() == ["4.17", "4.20"]
    monkeypatch.setenv("XENSR_REALXEN_RELEASES", "4.20, 4.17")
    assert runner.releases() == ["4.17", "4.20"]  # oldest first
    monkeypatch.setenv("XENSR_REALXEN_RELEASES", "4.20")
    assert runner.releases() == ["4.20"]
    monkeypatch.setenv("XENSR_REALXEN_RELEASES", "4.99")
    with pytest.raises(ValueError, match="unknown releases"):
        runner.releases()
