"""Build what the real-Xen tier boots, from Debian's packages and this checkout.

Nothing Xen is installed on the host: the packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x``.  The pieces:

* ``xen``: the uncompressed Xen ELF (QEMU's multiboot loader wants it);
* ``kernel``: Debian's kernel and the few modules dom0 needs early (virtio
  disk, ext4, the Xen device drivers);
* ``dom0-initrd``: a busybox initramfs that loads those modules, mounts the
  root and payload disks and switches to the root disk;
* ``guest-initrd``: the PV guest's busybox initramfs (a counter on hvc0);
* ``root``: dom0's root disk, an ext4 image of a minimal bookworm with
  ``xen-utils-4.17`` (at the hypervisor's version) and python3;
* ``wheel``: the xensr wheel built from this checkout;
* ``payload``: a small ext4 image with the unpacked wheel, the scripts that
  run in dom0 and the guest's kernel and initramfs.

Each piece is cached in its own directory under the cache directory
(``$XENSR_REALXEN_CACHE``, default ``.cache/realxen`` in the checkout), named
by a digest of its inputs (package versions, script contents, the wheel's
hash).  A rerun rebuilds only what changed, usually just the wheel and the
payload.  ``python -m tests.realxen.images`` builds (or checks) everything.
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

XEN_HYPERVISOR = "xen-hypervisor-4.17-amd64"
XEN_UTILS = "xen-utils-4.17"
KERNEL_META = "linux-image-amd64"
SUITE = "bookworm"

# Installed in dom0's root next to the minimal base; the Xen ones are pinned
# to the hypervisor's version.
ROOT_BASE_PACKAGES = ["kmod", "busybox-static", "python3", "procps"]
ROOT_XEN_PACKAGES = [XEN_UTILS, "xenstore-utils"]

# Modules dom0 loads from its initramfs, in this order (their dependencies
# are added in front).  crc32c is what ext4 asks the crypto API for at mount.
DOM0_MODULES = [
    "virtio_pci", "virtio_blk", "crc32c_generic", "ext4",
    "xenfs", "xen_evtchn", "xen_gntdev", "xen_gntalloc", "xen_privcmd",
]

# Bump when a recipe changes in a way its inputs do not show.
RECIPE = {"xen": 1, "kernel": 1, "dom0-initrd": 1, "guest-initrd": 1,
          "root": 1, "wheel": 1, "payload": 1}

# The sources a wheel is built from (tracked or new, never ignored files).
WHEEL_SOURCES = ["xensr", "helper_c", "simhost", "codegen", "setup.py", "pyproject.toml",
                 "README.md", "LICENSE", "MANIFEST.in"]


class BuildError(Exception):
    """Building an image failed; the message says which step and why."""


def log(msg: str) -> None:
    print(f"realxen: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    env = os.environ.get("XENSR_REALXEN_CACHE")
    return Path(env) if env else REPO / ".cache" / "realxen"


@functools.lru_cache(maxsize=None)
def _apt_mirror(suite: str) -> str:
    """The repository URI this machine's apt configuration uses for suite
    (the images come from the same Debian mirror as the host's packages)."""
    out = run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"],
              what="apt-get indextargets")
    for line in out.splitlines():
        uri, _, release = line.partition(" ")
        if release.strip() == suite:
            return uri.rstrip("/")
    raise BuildError(f"no Debian mirror for {suite} in this machine's apt configuration "
                     "(run apt-get update, or set XENSR_REALXEN_MIRROR and "
                     "XENSR_REALXEN_SECURITY_MIRROR)")


def mirror() -> str:
    return os.environ.get("XENSR_REALXEN_MIRROR") or _apt_mirror(SUITE)


def security_mirror() -> str:
    return os.environ.get("XENSR_REALXEN_SECURITY_MIRROR") or _apt_mirror(f"{SUITE}-security")


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


def apt_show(pkg: str) -> Dict[str, str]:
    """The candidate version's fields (``apt-cache show``) of a package."""
    out = run(["apt-cache", "show", "--no-all-versions", pkg],
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


def resolve_versions() -> Dict[str, str]:
    """Package names and versions this build uses (the cache keys)."""
    xen = apt_show(XEN_HYPERVISOR)["Version"]
    utils = apt_show(XEN_UTILS)["Version"]
    if utils != xen:
        raise BuildError(f"apt's {XEN_UTILS} {utils} differs from "
                         f"{XEN_HYPERVISOR} {xen}: run apt-get update")
    # The metapackage depends on the versioned image package.
    kdeps = apt_show(KERNEL_META)["Depends"]
    kpkg = next((d.split()[0] for d in kdeps.split(",")
                 if d.strip().startswith("linux-image-")), None)
    if kpkg is None:
        raise BuildError(f"cannot find the kernel package in {KERNEL_META}'s "
                         f"Depends: {kdeps}")
    kver = apt_show(kpkg)["Version"]
    return {"xen": xen, "kernel_pkg": kpkg, "kernel": kver}


def download(pkg: str, version: str) -> Path:
    """``apt-get download`` a package (cached under debs/), return the .deb."""
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    dest = debs / f"{pkg}_{version.replace(':', '%3a')}_amd64.deb"
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
               f"{pkg}={version}"]
        try:
            run(cmd, what=f"apt-get download {pkg}", cwd=tmp)
        except BuildError as exc:  # once more, for a mirror hiccup
            log(f"{exc}\nrealxen: trying once more")
            run(cmd, what=f"apt-get download {pkg}", cwd=tmp)
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise BuildError(f"apt-get download {pkg}={version} left {got}")
        for old in debs.glob(f"{pkg}_*.deb"):
            old.unlink()
        got[0].rename(dest)
    return dest


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


def stage(kind: str, inputs: dict, build: Callable[[Path], None]) -> StageInfo:
    """Return the cached directory for (kind, inputs), building it if absent.

    A stage is built in a temporary directory and renamed into place, so an
    interrupted build never leaves a half-made entry.  Entries of the same
    kind with other keys are removed once a new one is in place.
    """
    inputs = dict(inputs, recipe=RECIPE[kind])
    key = digest(inputs)
    c = cache_dir()
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


def build_xen(versions: Dict[str, str]) -> StageInfo:
    def build(out: Path) -> None:
        deb = download(XEN_HYPERVISOR, versions["xen"])
        x = out / "x"
        run(["dpkg-deb", "-x", str(deb), str(x)], what="unpack Xen")
        gz = x / "boot" / "xen-4.17-amd64.gz"
        if not gz.exists():
            raise BuildError(f"{deb.name} has no boot/xen-4.17-amd64.gz")
        with gzip.open(gz) as src, open(out / "xen.elf", "wb") as dst:
            shutil.copyfileobj(src, dst)
        if (out / "xen.elf").read_bytes()[:4] != b"\x7fELF":
            raise BuildError("boot/xen-4.17-amd64.gz is not a gzipped ELF")
        force_rmtree(x)

    return stage("xen", {"pkg": XEN_HYPERVISOR, "version": versions["xen"]}, build)


def modinfo(ko: Path) -> Dict[str, List[str]]:
    """The ``.modinfo`` section of a kernel module (ELF64 little-endian)."""
    data = ko.read_bytes()
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
    for ko in moddir.rglob("*.ko"):
        index[ko.name[:-3].replace("-", "_")] = ko
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        for line in bfile.read_text().splitlines():
            builtin.add(Path(line).name.rsplit(".ko", 1)[0].replace("-", "_"))
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


def build_kernel(versions: Dict[str, str]) -> StageInfo:
    def build(out: Path) -> None:
        deb = download(versions["kernel_pkg"], versions["kernel"])
        k = out / "k"
        run(["dpkg-deb", "-x", str(deb), str(k)], what="unpack the kernel")
        vmlinuz = sorted((k / "boot").glob("vmlinuz-*"))
        mods = sorted((k / "lib" / "modules").glob("*"))
        if len(vmlinuz) != 1 or len(mods) != 1:
            raise BuildError(f"{deb.name}: expected one vmlinuz and one module "
                             f"tree, found {vmlinuz} {mods}")
        shutil.copy2(vmlinuz[0], out / "vmlinuz")
        (out / "modules").mkdir()
        names = []
        for ko in module_closure(mods[0], DOM0_MODULES):
            shutil.copy2(ko, out / "modules" / ko.name)
            names.append(ko.name)
        (out / "modules.order").write_text("\n".join(names) + "\n")
        (out / "release").write_text(mods[0].name + "\n")
        force_rmtree(k)

    return stage("kernel", {"pkg": versions["kernel_pkg"], "version": versions["kernel"],
                            "modules": DOM0_MODULES}, build)


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


def build_dom0_initrd(kernel: StageInfo) -> StageInfo:
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
                                 "busybox": file_sha256(busybox())}, build)


def build_guest_initrd() -> StageInfo:
    init = HERE / "guest" / "init"

    def build(out: Path) -> None:
        c = busybox_cpio()
        c.file("init", init.read_bytes(), 0o755)
        write_gz(out / "initrd.gz", c.finish())

    return stage("guest-initrd", {"init": file_sha256(init),
                                  "busybox": file_sha256(busybox())}, build)


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


def build_root(versions: Dict[str, str]) -> StageInfo:
    inputs = {"suite": SUITE, "base": ROOT_BASE_PACKAGES, "xen": ROOT_XEN_PACKAGES,
              "version": versions["xen"], "mirror": mirror(),
              "security": security_mirror()}

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
                     "--include=" + ",".join(ROOT_BASE_PACKAGES), SUITE, str(tree),
                     mirror()], what="debootstrap", logfile=blog, timeout=1200)
                break
            except BuildError as exc:
                if attempt == 2:
                    raise
                log(f"{exc}\nrealxen: trying debootstrap once more")
                force_rmtree(tree)
        (tree / "etc/apt/sources.list").write_text(
            f"deb {mirror()} {SUITE} main\n"
            f"deb {mirror()} {SUITE}-updates main\n"
            f"deb {security_mirror()} {SUITE}-security main\n")
        policy = tree / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# no services start in this image's chroot\nexit 101\n")
        policy.chmod(0o755)
        shutil.copy2("/etc/resolv.conf", tree / "etc/resolv.conf")
        chroot(tree, "apt-get", "update", "-q", what="apt-get update (chroot)",
               logfile=blog)
        pins = [f"{p}={versions['xen']}" for p in ROOT_XEN_PACKAGES]
        chroot(tree, "apt-get", "install", "-y", "-q", "--no-install-recommends",
               *pins, what=f"apt-get install {' '.join(ROOT_XEN_PACKAGES)} (chroot)",
               logfile=blog)
        got = chroot(tree, "dpkg-query", "-W", "-f=${Version}", XEN_UTILS,
                     what="dpkg-query", logfile=blog).strip()
        if got != versions["xen"]:
            raise BuildError(f"dom0 got {XEN_UTILS} {got}, the hypervisor is "
                             f"{versions['xen']}")
        chroot(tree, "apt-get", "clean", what="apt-get clean", logfile=blog)
        for d in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                  "usr/share/locale", "usr/share/info"):
            p = tree / d
            if p.exists():
                force_rmtree(p)
                p.mkdir()
        (tree / "etc/resolv.conf").unlink()
        (tree / "etc/hostname").write_text("xensr-dom0\n")
        (tree / "payload").mkdir()
        mkfs(tree, out / "root.img", "xensr-root", 64 << 20)
        force_rmtree(tree)

    return stage("root", inputs, build)


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


def build_wheel() -> StageInfo:
    files = wheel_source_files()
    h = hashlib.sha256()
    for f in files:
        p = REPO / f
        h.update(f.encode() + b"\0" + oct(p.stat().st_mode & 0o111).encode() + b"\0")
        h.update(p.read_bytes())

    def build(out: Path) -> None:
        src = out / "src"
        for f in files:
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
        # A release build whatever the calling test session set (a
        # sanitizer variant would need runtimes dom0 does not have).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("XENSR_") and k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
        run([build_python(), "-m", "build", "--wheel", "--no-isolation",
             "--outdir", str(out / "dist"), str(src)],
            what="build the xensr wheel", logfile=out / "build.log", env=env)
        wheels = list((out / "dist").glob("xensr-*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"python -m build made {wheels}")
        wheels[0].rename(out / wheels[0].name)
        force_rmtree(src)
        force_rmtree(out / "dist")

    return stage("wheel", {"sources": h.hexdigest()}, build)


def wheel_file(wheel: StageInfo) -> Path:
    return next(wheel.path.glob("xensr-*.whl"))


def given_wheel() -> Optional[StageInfo]:
    """``$XENSR_REALXEN_WHEEL``: test this wheel instead of building one."""
    env = os.environ.get("XENSR_REALXEN_WHEEL")
    if not env:
        return None
    whl = Path(env).resolve()
    if not whl.is_file() or not whl.name.startswith("xensr-") or whl.suffix != ".whl":
        raise BuildError(f"XENSR_REALXEN_WHEEL={env} is not an xensr-*.whl file")
    return StageInfo(whl.parent, file_sha256(whl)[:16], False, 0.0)


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


def build_payload(versions: Dict[str, str], kernel: StageInfo, guest: StageInfo,
                  whl: Path) -> StageInfo:
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

    return stage("payload", inputs, build)


# --------------------------------------------------------------------------


@dataclasses.dataclass
class Artifacts:
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


def build_all() -> Artifacts:
    """Build (or find in the cache) everything a boot needs."""
    with cache_lock():
        versions = resolve_versions()
        stages: Dict[str, StageInfo] = {}
        stages["xen"] = build_xen(versions)
        stages["kernel"] = kernel = build_kernel(versions)
        stages["dom0-initrd"] = build_dom0_initrd(kernel)
        stages["guest-initrd"] = guest = build_guest_initrd()
        stages["root"] = build_root(versions)
        wheel = given_wheel()
        if wheel is None:
            stages["wheel"] = wheel = build_wheel()
            whl = wheel_file(wheel)
        else:
            whl = Path(os.environ["XENSR_REALXEN_WHEEL"]).resolve()
        stages["payload"] = build_payload(versions, kernel, guest, whl)
        return Artifacts(
            xen_elf=stages["xen"].path / "xen.elf",
            vmlinuz=kernel.path / "vmlinuz",
            dom0_initrd=stages["dom0-initrd"].path / "initrd.gz",
            root_img=stages["root"].path / "root.img",
            payload_img=stages["payload"].path / "payload.img",
            versions=versions, stages=stages)


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.realxen.images",
                                 description=__doc__.split("\n\n")[0])
    ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        art = build_all()
    except BuildError as exc:
        print(f"realxen: build failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(art).items()
                      if k not in ("stages",)}, indent=1))
    print(f"{art.summary()}; total {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
