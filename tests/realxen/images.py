"""Build what the real-Xen tier boots, per Xen release, from Debian's packages.

Each release the tier boots (:data:`RELEASES`: Xen 4.17 from Debian 12, Xen
4.20 from Debian 13) is built from its own Debian release.  Nothing Xen is
installed on the host.  The pieces:

* ``system``: one ``debootstrap`` of the release's suite with its
  ``xen-utils-4.X`` (at the hypervisor's version), then from the same tree
  the uncompressed Xen ELF (QEMU's multiboot loader wants it), Debian's
  kernel with the few modules dom0 needs early (virtio disk, ext4, the Xen
  device drivers), and dom0's root disk (an ext4 image of the tree);
* ``dom0-initrd``: a busybox initramfs that loads those modules, mounts the
  root and payload disks and switches to the root disk;
* ``guest-initrd``: the guests' busybox initramfs (a counter on hvc0);
* ``wheel``: the xensr wheel built from this checkout inside the matching
  Debian (this machine when its Xen is the release's, else the Debian root
  ``./bootstrap`` keeps in ``.cache/debian<N>/root``);
* ``payload``: a small ext4 image with the unpacked wheel, the scripts that
  run in dom0 and the guest's kernel and initramfs.

Each piece is cached in its own directory under the release's cache
directory (``<cache>/<release>/``, ``<cache>`` being ``$XENSR_REALXEN_CACHE``,
default ``.cache/realxen`` in the checkout), named by a digest of its inputs
(package versions, script contents, the wheel's hash).  A rerun rebuilds
only what changed, usually just the wheel and the payload.
``python -m tests.realxen.images [RELEASE...]`` builds (or checks) them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclasses.dataclass(frozen=True)
class Release:
    """One Xen release the tier boots, and the Debian release it comes from."""

    xen: str        # "4.17"
    debian: str     # "12"
    suite: str      # "bookworm"

    @property
    def hypervisor_pkg(self) -> str:
        return f"xen-hypervisor-{self.xen}-amd64"

    @property
    def utils_pkg(self) -> str:
        return f"xen-utils-{self.xen}"

    @property
    def xen_gz(self) -> str:
        return f"boot/xen-{self.xen}-amd64.gz"

    @property
    def xen_packages(self) -> List[str]:
        """Installed in dom0's root, pinned to the hypervisor's version."""
        return [self.utils_pkg, "xenstore-utils"]


#: The releases the tier boots, oldest first (a file saved in one boot is
#: restored in the next release's boot).
RELEASES: Dict[str, Release] = {
    "4.17": Release("4.17", "12", "bookworm"),
    "4.20": Release("4.20", "13", "trixie"),
}

KERNEL_META = "linux-image-amd64"

# Installed in dom0's root next to the minimal base.
ROOT_BASE_PACKAGES = ["kmod", "busybox-static", "python3", "procps"]

# What building the wheel inside a Debian root needs (Debian's packages:
# no package index is used there).
WHEEL_BUILD_PACKAGES = ["build-essential", "pkg-config", "libxen-dev", "python3-dev",
                        "python3-setuptools", "cython3", "python3-build", "python3-wheel"]

# Modules dom0 loads from its initramfs, in this order (their dependencies
# are added in front).  crc32c is what ext4 asks the crypto API for at mount.
DOM0_MODULES = [
    "virtio_pci", "virtio_blk", "crc32c_generic", "ext4",
    "xenfs", "xen_evtchn", "xen_gntdev", "xen_gntalloc", "xen_privcmd",
]

# Bump when a recipe changes in a way its inputs do not show.
RECIPE = {"system": 1, "dom0-initrd": 1, "guest-initrd": 1, "wheel": 2, "payload": 2}

# The sources a wheel is built from (tracked or new, never ignored files).
WHEEL_SOURCES = ["xensr", "helper_c", "simhost", "codegen", "setup.py", "pyproject.toml",
                 "README.md", "LICENSE", "MANIFEST.in"]


class BuildError(Exception):
    """Building an image failed; the message says which step and why."""


def log(msg: str) -> None:
    print(f"realxen: {msg}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A release cannot be built on this machine (no Debian of that release
    to read its packages and build its wheel in); the tier skips it with
    this reason."""


def cache_dir() -> Path:
    env = os.environ.get("XENSR_REALXEN_CACHE")
    return Path(env) if env else REPO / ".cache" / "realxen"


def release_cache(rel: Release) -> Path:
    """The cache directory of one release's pieces and runs."""
    return cache_dir() / rel.xen


def host_suite() -> str:
    """This machine's Debian suite (``VERSION_CODENAME`` of os-release)."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        k, _, v = line.partition("=")
        if k == "VERSION_CODENAME":
            return v.strip().strip('"')
    return ""


@functools.lru_cache(maxsize=None)
def _apt_targets() -> Dict[str, str]:
    """Suite -> repository URI, from this machine's apt configuration."""
    out = run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"],
              what="apt-get indextargets")
    found: Dict[str, str] = {}
    for line in out.splitlines():
        uri, _, release = line.partition(" ")
        if uri and release.strip():
            found.setdefault(release.strip(), uri.rstrip("/"))
    return found


def _apt_mirror(suite: str) -> str:
    """The repository URI this machine's apt configuration uses for suite
    (the images come from the same Debian mirror as the host's packages).
    Another release's suite (``trixie`` on a bookworm machine) comes from the
    same archive as this machine's own suite (``-security`` from its
    security archive)."""
    targets = _apt_targets()
    if suite in targets:
        return targets[suite]
    own = host_suite()
    if own:
        kind = suite.partition("-")[2]
        same = f"{own}-{kind}" if kind else own
        if same in targets:
            return targets[same]
    raise BuildError(f"no Debian mirror for {suite} in this machine's apt configuration "
                     "(run apt-get update, or set XENSR_REALXEN_MIRROR and "
                     "XENSR_REALXEN_SECURITY_MIRROR)")


def mirror(rel: Release) -> str:
    return os.environ.get("XENSR_REALXEN_MIRROR") or _apt_mirror(rel.suite)


def security_mirror(rel: Release) -> str:
    return (os.environ.get("XENSR_REALXEN_SECURITY_MIRROR")
            or _apt_mirror(f"{rel.suite}-security"))


def debian_root(rel: Release) -> Optional[Path]:
    """Where the release's Debian is: None for this machine, else the Debian
    root ``./bootstrap`` keeps (``.cache/debian<N>/root``, e.g. Debian 13's
    for its test run).  Unavailable when there is neither."""
    if host_suite() == rel.suite:
        return None
    root = REPO / ".cache" / f"debian{rel.debian}" / "root"
    if (root / ".xensr-ready").exists():
        if f"VERSION_CODENAME={rel.suite}" in (root / "etc/os-release").read_text():
            return root
    raise Unavailable(f"Xen {rel.xen} comes from Debian {rel.debian} ({rel.suite}); this "
                      f"machine is {host_suite() or 'not Debian'} and {root} is not a "
                      f"Debian {rel.debian} root (./bootstrap test makes Debian 13's on "
                      "Debian 12)")


def in_root(root: Optional[Path], cmd: List[str]) -> List[str]:
    """``cmd`` run on this machine (root None) or chrooted into ``root``."""
    if root is None:
        return cmd
    return ["chroot", str(root), "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL=C", "HOME=/root", "DEBIAN_FRONTEND=noninteractive", *cmd]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """Digest of every file under ``root`` (paths, modes and contents)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(oct(p.stat().st_mode & 0o777).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run(cmd: List[str], *, what: str, logfile: Optional[Path] = None,
        timeout: float = 900, **kw) -> str:
    """Run a command; on failure raise BuildError with the end of its output."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, **kw)
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: {cmd[0]} not found ({exc})") from None
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        raise BuildError(f"{what}: timed out after {timeout:.0f} s\n"
                         + tail(out)) from None
    out = proc.stdout.decode(errors="replace")
    if logfile is not None:
        with open(logfile, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out}\n")
    if proc.returncode != 0:
        raise BuildError(f"{what}: `{' '.join(cmd)}` exited with status "
                         f"{proc.returncode}\n" + tail(out))
    log(f"{what}: {time.monotonic() - t0:.1f} s")
    return out


def tail(text: str, n: int = 30) -> str:
    lines = text.rstrip().splitlines()[-n:]
    return "\n".join("  | " + line for line in lines)


# --------------------------------------------------------------------------
# Debian packages


def apt_show(pkg: str, root: Optional[Path] = None) -> Dict[str, str]:
    """The candidate version's fields (``apt-cache show``) of a package, as
    apt on this machine or in a Debian root sees it."""
    out = run(in_root(root, ["apt-cache", "show", "--no-all-versions", pkg]),
              what=f"apt-cache show {pkg}")
    fields: Dict[str, str] = {}
    for line in out.splitlines():
        if line and not line[0].isspace() and ":" in line:
            k, _, v = line.partition(":")
            fields.setdefault(k.strip(), v.strip())
    if "Version" not in fields:
        raise BuildError(f"apt knows no candidate for {pkg}: run apt-get update "
                         "(./bootstrap deps does it)")
    return fields


def resolve_versions(rel: Release) -> Dict[str, str]:
    """Package names and versions this build uses (the cache keys), as the
    release's Debian (this machine, or its Debian root) knows them."""
    root = debian_root(rel)
    xen = apt_show(rel.hypervisor_pkg, root)["Version"]
    utils = apt_show(rel.utils_pkg, root)["Version"]
    if utils != xen:
        raise BuildError(f"apt's {rel.utils_pkg} {utils} differs from "
                         f"{rel.hypervisor_pkg} {xen}: run apt-get update")
    # The metapackage depends on the versioned image package.
    kdeps = apt_show(KERNEL_META, root)["Depends"]
    kpkg = next((d.split()[0] for d in kdeps.split(",")
                 if d.strip().startswith("linux-image-")), None)
    if kpkg is None:
        raise BuildError(f"cannot find the kernel package in {KERNEL_META}'s "
                         f"Depends: {kdeps}")
    kver = apt_show(kpkg, root)["Version"]
    return {"release": rel.xen, "suite": rel.suite, "xen": xen, "kernel_pkg": kpkg,
            "kernel": kver}


# --------------------------------------------------------------------------
# Cache stages


@contextlib.contextmanager
def cache_lock():
    c = cache_dir()
    c.mkdir(parents=True, exist_ok=True)
    with open(c / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclasses.dataclass
class StageInfo:
    path: Path
    key: str
    built: bool
    seconds: float


def stage(kind: str, inputs: dict, build: Callable[[Path], None],
          where: Optional[Path] = None) -> StageInfo:
    """Return the cached directory for (kind, inputs), building it if absent.

    Entries live in ``where`` (a release's cache directory; default the
    cache directory).  A stage is built in a temporary directory and renamed
    into place, so an interrupted build never leaves a half-made entry.
    Entries of the same kind with other keys in ``where`` are removed once a
    new one is in place.
    """
    inputs = dict(inputs, recipe=RECIPE[kind])
    key = digest(inputs)
    c = where if where is not None else cache_dir()
    c.mkdir(parents=True, exist_ok=True)
    final = c / f"{kind}-{key}"
    t0 = time.monotonic()
    if (final / ".done").exists():
        return StageInfo(final, key, False, 0.0)
    tmp = c / f".tmp-{kind}-{key}"
    if tmp.exists():
        force_rmtree(tmp)
    tmp.mkdir(parents=True)
    log(f"building {kind} ({key})")
    try:
        build(tmp)
    except BaseException:
        force_rmtree(tmp)
        raise
    (tmp / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True))
    (tmp / ".done").write_text("")
    if final.exists():
        force_rmtree(final)
    tmp.rename(final)
    for other in c.glob(f"{kind}-*"):
        if other != final and other.is_dir():
            force_rmtree(other)
    secs = time.monotonic() - t0
    log(f"built {kind} in {secs:.1f} s")
    return StageInfo(final, key, True, secs)


def force_rmtree(path: Path) -> None:
    def onerror(func, p, exc):  # read-only dirs left by debootstrap/dpkg
        try:
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, 0o755)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=onerror)


# --------------------------------------------------------------------------
# Xen and the kernel


MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")


def module_name(ko: Path) -> str:
    """A module file's name as the kernel knows it (``xen-evtchn.ko.xz`` ->
    ``xen_evtchn``)."""
    for suffix in MODULE_SUFFIXES:
        if ko.name.endswith(suffix):
            return ko.name[:-len(suffix)].replace("-", "_")
    return ko.name.replace("-", "_")


def module_bytes(ko: Path) -> bytes:
    """A module file's ELF, decompressed (Debian 13 ships them xz-compressed;
    busybox's insmod loads only plain ones)."""
    data = ko.read_bytes()
    if ko.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if ko.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc"], input=data, check=True,
                              capture_output=True).stdout
    return data


def modinfo(ko: Path) -> Dict[str, List[str]]:
    """The ``.modinfo`` section of a kernel module (ELF64 little-endian)."""
    data = module_bytes(ko)
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError(f"{ko} is not an ELF64 little-endian module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> Tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            info: Dict[str, List[str]] = {}
            for item in data[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, _, v = item.decode(errors="replace").partition("=")
                    info.setdefault(k, []).append(v)
            return info
    raise BuildError(f"{ko} has no .modinfo section")


def module_closure(moddir: Path, wanted: Iterable[str]) -> List[Path]:
    """Module files for ``wanted`` and their dependencies, in load order."""
    index: Dict[str, Path] = {}
    for suffix in MODULE_SUFFIXES:
        for ko in moddir.rglob("*" + suffix):
            index[module_name(ko)] = ko
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        for line in bfile.read_text().splitlines():
            builtin.add(module_name(Path(line)))
    order: List[Path] = []
    seen = set()

    def visit(name: str, chain: Tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise BuildError(f"module dependency loop: {' -> '.join(chain + (name,))}")
        ko = index.get(name)
        if ko is None:
            raise BuildError(f"kernel module {name} not found under {moddir}")
        for dep in modinfo(ko).get("depends", [""])[0].split(","):
            if dep:
                visit(dep, chain + (name,))
        seen.add(name)
        order.append(ko)

    for name in wanted:
        visit(name, ())
    return order


def extract_kernel(tree: Path, out: Path) -> None:
    """Debian's kernel from an unpacked linux-image package (``tree``) into
    ``out``: ``vmlinuz``, the modules dom0 loads early (decompressed) in
    ``modules/`` with their load order, and the kernel's ``release``."""
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    mods = sorted((tree / "lib" / "modules").glob("*"))
    if not mods:
        mods = sorted((tree / "usr" / "lib" / "modules").glob("*"))
    if len(vmlinuz) != 1 or len(mods) != 1:
        raise BuildError(f"the kernel package: expected one vmlinuz and one module "
                         f"tree, found {vmlinuz} {mods}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(vmlinuz[0], out / "vmlinuz")
    (out / "modules").mkdir()
    names = []
    for ko in module_closure(mods[0], DOM0_MODULES):
        name = module_name(ko) + ".ko"
        (out / "modules" / name).write_bytes(module_bytes(ko))
        names.append(name)
    (out / "modules.order").write_text("\n".join(names) + "\n")
    (out / "release").write_text(mods[0].name + "\n")


# --------------------------------------------------------------------------
# Initramfs images (cpio "newc", written here so no root or cpio is needed)


class Cpio:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.names = set()

    def _entry(self, name: str, mode: int, data: bytes = b"",
               rdev: Tuple[int, int] = (0, 0)) -> None:
        self.names.add(name)
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name) + 1, 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + name.encode() + b"\0")
        self.buf.write(b"\0" * (-(len(hdr) + len(name) + 1) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))
        self.ino += 1

    def dir(self, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.names:
                self._entry(d, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def busybox() -> Path:
    p = Path("/bin/busybox")
    if not p.exists():
        raise BuildError("/bin/busybox is missing: apt-get install busybox-static")
    return p


def busybox_cpio() -> Cpio:
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        c.dir(d)
    c.file("bin/busybox", busybox().read_bytes(), 0o755)
    c.symlink("bin/sh", "busybox")
    # The kernel opens /dev/console for init before anything is mounted.
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    return c


def write_gz(path: Path, data: bytes) -> None:
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0,
                                              compresslevel=6) as gz:
        gz.write(data)


def build_dom0_initrd(rel: Release, kernel: StageInfo) -> StageInfo:
    init = HERE / "initramfs" / "init"

    def build(out: Path) -> None:
        c = busybox_cpio()
        c.file("init", init.read_bytes(), 0o755)
        c.dir("newroot")
        order = (kernel.path / "modules.order").read_text().split()
        for name in order:
            c.file(f"modules/{name}", (kernel.path / "modules" / name).read_bytes())
        c.file("modules/order", ("\n".join(order) + "\n").encode())
        write_gz(out / "initrd.gz", c.finish())

    return stage("dom0-initrd", {"kernel": kernel.key, "init": file_sha256(init),
                                 "busybox": file_sha256(busybox())}, build,
                 release_cache(rel))


def build_guest_initrd(rel: Release) -> StageInfo:
    init = HERE / "guest" / "init"

    def build(out: Path) -> None:
        c = busybox_cpio()
        c.file("init", init.read_bytes(), 0o755)
        write_gz(out / "initrd.gz", c.finish())

    return stage("guest-initrd", {"init": file_sha256(init),
                                  "busybox": file_sha256(busybox())}, build,
                 release_cache(rel))


# --------------------------------------------------------------------------
# dom0's root disk


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            total += (st.st_size + 4095) // 4096 * 4096
    return total


def mkfs(tree: Path, image: Path, label: str, slack: int) -> None:
    size_mib = (tree_size(tree) * 5 // 4 + slack) // (1 << 20) + 16
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-O", "^has_journal",
         "-E", "lazy_itable_init=1", "-d", str(tree), str(image), f"{size_mib}M"],
        what=f"mkfs.ext4 {label} ({size_mib} MiB)")


def chroot(tree: Path, *cmd: str, what: str, logfile: Path) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
           "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    return run(["chroot", str(tree), *cmd], what=what, logfile=logfile, env=env)


def build_system(rel: Release, versions: Dict[str, str]) -> StageInfo:
    """One debootstrap of the release's suite gives all three: dom0's root
    (with ``xen-utils-4.X``), the hypervisor and the kernel (both fetched
    with apt inside that root, at the versions the cache key names).
    Output: ``xen.elf``, ``kernel/`` (see :func:`extract_kernel`) and
    ``root.img``."""
    inputs = {"suite": rel.suite, "base": ROOT_BASE_PACKAGES, "xen": rel.xen_packages,
              "hypervisor": rel.hypervisor_pkg, "version": versions["xen"],
              "kernel_pkg": versions["kernel_pkg"], "kernel": versions["kernel"],
              "modules": DOM0_MODULES, "mirror": mirror(rel),
              "security": security_mirror(rel)}

    def build(out: Path) -> None:
        if os.geteuid() != 0:
            raise BuildError("building dom0's root disk needs root "
                             "(debootstrap and chroot)")
        if shutil.which("debootstrap") is None:
            raise BuildError("debootstrap is missing: apt-get install debootstrap")
        tree = out / "tree"
        blog = out / "build.log"
        for attempt in (1, 2):  # a mirror hiccup should not fail the tier
            try:
                run(["debootstrap", "--variant=minbase",
                     "--include=" + ",".join(ROOT_BASE_PACKAGES), rel.suite, str(tree),
                     mirror(rel)], what=f"debootstrap {rel.suite}", logfile=blog,
                    timeout=1200)
                break
            except BuildError as exc:
                if attempt == 2:
                    raise
                log(f"{exc}\nrealxen: trying debootstrap once more")
                force_rmtree(tree)
        (tree / "etc/apt/sources.list").write_text(
            f"deb {mirror(rel)} {rel.suite} main\n"
            f"deb {mirror(rel)} {rel.suite}-updates main\n"
            f"deb {security_mirror(rel)} {rel.suite}-security main\n")
        policy = tree / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# no services start in this image's chroot\nexit 101\n")
        policy.chmod(0o755)
        shutil.copy2("/etc/resolv.conf", tree / "etc/resolv.conf")
        chroot(tree, "apt-get", "update", "-q", what="apt-get update (chroot)",
               logfile=blog)
        pins = [f"{p}={versions['xen']}" for p in rel.xen_packages]
        chroot(tree, "apt-get", "install", "-y", "-q", "--no-install-recommends",
               *pins, what=f"apt-get install {' '.join(rel.xen_packages)} (chroot)",
               logfile=blog)
        got = chroot(tree, "dpkg-query", "-W", "-f=${Version}", rel.utils_pkg,
                     what="dpkg-query", logfile=blog).strip()
        if got != versions["xen"]:
            raise BuildError(f"dom0 got {rel.utils_pkg} {got}, the hypervisor is "
                             f"{versions['xen']}")
        # The hypervisor and the kernel: fetched by the same apt, unpacked
        # outside the tree (installing them would build an initramfs for
        # nothing).
        debs = tree / "var/tmp/xensr-debs"
        debs.mkdir(parents=True)
        chroot(tree, "sh", "-c", "cd /var/tmp/xensr-debs && apt-get download -q -o APT::Sandbox::User=root "
               f"{rel.hypervisor_pkg}={versions['xen']} "
               f"{versions['kernel_pkg']}={versions['kernel']}",
               what="apt-get download (chroot) the hypervisor and the kernel", logfile=blog)
        xdeb = list(debs.glob(f"{rel.hypervisor_pkg}_*.deb"))
        kdeb = list(debs.glob(f"{versions['kernel_pkg']}_*.deb"))
        if len(xdeb) != 1 or len(kdeb) != 1:
            raise BuildError(f"apt-get download left {sorted(p.name for p in debs.iterdir())}")
        x = out / "x"
        run(["dpkg-deb", "-x", str(xdeb[0]), str(x)], what="unpack Xen")
        gz = x / rel.xen_gz
        if not gz.exists():
            raise BuildError(f"{xdeb[0].name} has no {rel.xen_gz}")
        with gzip.open(gz) as src, open(out / "xen.elf", "wb") as dst:
            shutil.copyfileobj(src, dst)
        if (out / "xen.elf").read_bytes()[:4] != b"\x7fELF":
            raise BuildError(f"{rel.xen_gz} is not a gzipped ELF")
        k = out / "k"
        run(["dpkg-deb", "-x", str(kdeb[0]), str(k)], what="unpack the kernel")
        extract_kernel(k, out / "kernel")
        for d in (x, k, debs):
            force_rmtree(d)
        chroot(tree, "apt-get", "clean", what="apt-get clean", logfile=blog)
        for d in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                  "usr/share/locale", "usr/share/info"):
            p = tree / d
            if p.exists():
                force_rmtree(p)
                p.mkdir()
        (tree / "etc/resolv.conf").unlink()
        (tree / "etc/hostname").write_text("xensr-dom0\n")
        for d in ("payload", "export", "import"):
            (tree / d).mkdir()
        mkfs(tree, out / "root.img", "xensr-root", 64 << 20)
        force_rmtree(tree)

    return stage("system", inputs, build, release_cache(rel))


# --------------------------------------------------------------------------
# The xensr wheel and the payload disk


def wheel_source_files() -> List[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "--", *WHEEL_SOURCES],
            cwd=REPO, check=True, capture_output=True, text=True).stdout
        files = [f for f in out.splitlines() if (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout: every source file, without build products.
        files = []
        for top in WHEEL_SOURCES:
            p = REPO / top
            found = [p] if p.is_file() else list(p.rglob("*")) if p.is_dir() else []
            for f in found:
                rel = str(f.relative_to(REPO))
                if (f.is_file() and "__pycache__" not in f.parts
                        and f.suffix not in (".so", ".o", ".pyc")
                        and ".so." not in f.name and rel != "xensr/_xc.c"
                        and not rel.startswith(("xensr/bin/", "xensr/_simhost/"))):
                    files.append(rel)
    return sorted(set(files))


def build_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def host_xen_release() -> str:
    """The Xen release of this machine's libxen-dev ("" if none), which a
    wheel built here is for."""
    try:
        out = subprocess.run(["pkg-config", "--modversion", "xencontrol"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return ".".join(out.strip().split(".")[:2])


def wheel_root(rel: Release) -> Optional[Path]:
    """Where the release's wheel is built: None for this machine (its Xen is
    the release's), else the release's Debian root."""
    if host_xen_release() == rel.xen:
        return None
    root = debian_root(rel)
    if root is None:
        raise Unavailable(f"this machine is {rel.suite} but its libxen-dev is not Xen "
                          f"{rel.xen} (apt-get install libxen-dev)")
    return root


def ensure_packages(root: Path, packages: List[str], logfile: Path) -> None:
    """Install in a Debian root what of ``packages`` it lacks."""
    st = subprocess.run(in_root(root, ["dpkg-query", "-W", "-f=${Package} ${Status}\\n",
                                       *packages]),
                        stdin=subprocess.DEVNULL, capture_output=True, text=True)
    have = {ln.split()[0] for ln in st.stdout.splitlines() if ln.endswith(" installed")}
    missing = [p for p in packages if p not in have]
    if not missing:
        return
    cmd = in_root(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                         *missing])
    try:
        run(cmd, what=f"apt-get install {' '.join(missing)} in {root}", logfile=logfile)
    except BuildError:  # stale lists
        run(in_root(root, ["apt-get", "update", "-q"]), what=f"apt-get update in {root}",
            logfile=logfile)
        run(cmd, what=f"apt-get install {' '.join(missing)} in {root}", logfile=logfile)


def build_wheel(rel: Release) -> StageInfo:
    """The wheel, built from this checkout's sources inside the release's
    Debian: with this machine's .venv when its Xen is the release's, else
    in the release's Debian root with that Debian's own Python, compiler,
    libxen-dev and build tools (its packages, not the package index)."""
    root = wheel_root(rel)
    files = wheel_source_files()
    h = hashlib.sha256()
    for f in files:
        p = REPO / f
        h.update(f.encode() + b"\0" + oct(p.stat().st_mode & 0o111).encode() + b"\0")
        h.update(p.read_bytes())

    def build(out: Path) -> None:
        # A release build whatever the calling test session set (a
        # sanitizer variant would need runtimes dom0 does not have).
        blog = out / "build.log"
        if root is None:
            work = out
        else:
            ensure_packages(root, WHEEL_BUILD_PACKAGES, blog)
            work = root / "var" / "tmp" / f"xensr-wheel-{os.getpid()}"
            if work.exists():
                force_rmtree(work)
        src = work / "src"
        try:
            for f in files:
                (src / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, src / f)
            if root is None:
                env = {k: v for k, v in os.environ.items()
                       if not k.startswith("XENSR_")
                       and k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
                run([build_python(), "-m", "build", "--wheel", "--no-isolation",
                     "--outdir", str(work / "dist"), str(src)],
                    what="build the xensr wheel", logfile=blog, env=env)
            else:
                inside = "/" + str(work.relative_to(root))
                run(in_root(root, ["python3", "-m", "build", "--wheel", "--no-isolation",
                                   "--outdir", f"{inside}/dist", f"{inside}/src"]),
                    what=f"build the xensr wheel in Debian {rel.debian}'s root",
                    logfile=blog)
            wheels = list((work / "dist").glob("xensr-*.whl"))
            if len(wheels) != 1:
                raise BuildError(f"python -m build made {wheels}")
            shutil.move(str(wheels[0]), str(out / wheels[0].name))
        finally:
            force_rmtree(src)
            force_rmtree(work / "dist")
            if root is not None:
                force_rmtree(work)

    where = "host" if root is None else f"debian{rel.debian}-root"
    return stage("wheel", {"sources": h.hexdigest(), "release": rel.xen, "built_in": where},
                 build, release_cache(rel))


def wheel_file(wheel: StageInfo) -> Path:
    return next(wheel.path.glob("xensr-*.whl"))


def given_wheel(rel: Release) -> Optional[Path]:
    """``$XENSR_REALXEN_WHEEL_417`` (for 4.17; ``_420`` for 4.20): test this
    wheel instead of building one."""
    name = "XENSR_REALXEN_WHEEL_" + rel.xen.replace(".", "")
    env = os.environ.get(name)
    if not env:
        return None
    whl = Path(env).resolve()
    if not whl.is_file() or not whl.name.startswith("xensr-") or whl.suffix != ".whl":
        raise BuildError(f"{name}={env} is not an xensr-*.whl file")
    return whl


def unpack_wheel(whl: Path, dest: Path) -> None:
    """Unzip a wheel; files it marks executable (the helper) get 0755."""
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            # As pip does: executable if the wheel says so, else 0644.
            target.chmod(0o755 if (info.external_attr >> 16) & 0o111 else 0o644)


def build_payload(rel: Release, versions: Dict[str, str], kernel: StageInfo,
                  guest: StageInfo, whl: Path) -> StageInfo:
    inputs = {"wheel": file_sha256(whl), "dom0": tree_digest(HERE / "dom0"),
              "kernel": kernel.key, "guest": guest.key}

    def build(out: Path) -> None:
        tree = out / "tree"
        unpack_wheel(whl, tree / "site")
        shutil.copytree(HERE / "dom0", tree / "dom0",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (tree / "guest").mkdir()
        shutil.copy2(kernel.path / "vmlinuz", tree / "guest" / "vmlinuz")
        shutil.copy2(guest.path / "initrd.gz", tree / "guest" / "initrd.gz")
        (tree / "manifest.json").write_text(json.dumps(
            {"versions": versions, "wheel": whl.name, "inputs": inputs},
            indent=1, sort_keys=True))
        mkfs(tree, out / "payload.img", "xensr-payload", 8 << 20)
        force_rmtree(tree)

    return stage("payload", inputs, build, release_cache(rel))


# --------------------------------------------------------------------------


@dataclasses.dataclass
class Artifacts:
    release: Release
    xen_elf: Path
    vmlinuz: Path
    dom0_initrd: Path
    root_img: Path
    payload_img: Path
    versions: Dict[str, str]
    stages: Dict[str, StageInfo]

    def summary(self) -> str:
        parts = [f"{k}: {'built %.1f s' % s.seconds if s.built else 'cached'}"
                 for k, s in self.stages.items()]
        return ", ".join(parts)


def build_all(rel: Release) -> Artifacts:
    """Build (or find in the cache) everything a boot of ``rel`` needs;
    Unavailable when this machine has no Debian of that release."""
    debian_root(rel)
    wheel_root(rel)
    with cache_lock():
        versions = resolve_versions(rel)
        stages: Dict[str, StageInfo] = {}
        stages["system"] = system = build_system(rel, versions)
        kernel = StageInfo(system.path / "kernel", system.key, False, 0.0)
        stages["dom0-initrd"] = build_dom0_initrd(rel, kernel)
        stages["guest-initrd"] = guest = build_guest_initrd(rel)
        whl = given_wheel(rel)
        if whl is None:
            stages["wheel"] = wheel = build_wheel(rel)
            whl = wheel_file(wheel)
        stages["payload"] = build_payload(rel, versions, kernel, guest, whl)
        return Artifacts(
            release=rel,
            xen_elf=system.path / "xen.elf",
            vmlinuz=kernel.path / "vmlinuz",
            dom0_initrd=stages["dom0-initrd"].path / "initrd.gz",
            root_img=system.path / "root.img",
            payload_img=stages["payload"].path / "payload.img",
            versions=versions, stages=stages)


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.realxen.images",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("releases", nargs="*", metavar="RELEASE",
                    help=f"Xen releases to build: {', '.join(RELEASES)} (default: all)")
    args = ap.parse_args(argv)
    for name in args.releases:
        if name not in RELEASES:
            ap.error(f"unknown release {name} (known: {', '.join(RELEASES)})")
    status = 0
    for name in args.releases or list(RELEASES):
        t0 = time.monotonic()
        try:
            art = build_all(RELEASES[name])
        except (BuildError, Unavailable) as exc:
            print(f"realxen: Xen {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(json.dumps({k: str(v) for k, v in dataclasses.asdict(art).items()
                          if k not in ("stages", "release")}, indent=1))
        print(f"Xen {name}: {art.summary()}; total {time.monotonic() - t0:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
