"""Build steps that pyproject.toml cannot express.

Three kinds of native artifact are built here, all from this tree:

* the Cython extension ``xensr._xc`` (the callout);
* the helper program ``xensr/bin/xensr-save-helper`` (links only
  libxenctrl, libxenguest and libxentoollog);
* the simulated host's ``libxenctrl.so.4.X`` / ``libxenguest.so.4.X``
  (sources in ``simhost/``, see simhost/README.md) in ``xensr/_simhost/``;
* ``xensr/_build.py``, which records the Xen release built for;
* the manual pages (``python -m xensr._manpage``), installed as data files
  in ``share/man/man1``.

Builds are reproducible: given the same ``SOURCE_DATE_EPOCH`` the sdist
and the wheel are the same bytes whatever the build directory, umask or
locale (``-ffile-prefix-map``, file modes and archive order normalised).

Xen is found through pkg-config (Debian: ``apt-get install libxen-dev``);
its version picks the sonames and symbol-version nodes of the simulated
libraries from simhost/releases.py, the one table of known releases.
"""

import glob
import gzip
import os
import shlex
import stat
import subprocess
import sys
import tarfile

from setuptools import Extension, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext
from distutils.command.install_data import install_data
from setuptools.command.sdist import sdist

XEN_PKGS = ("xencontrol", "xenguest", "xentoollog")
WARN = ["-Wall", "-Wextra", "-Werror"]
HERE = os.path.dirname(os.path.abspath(__file__))
# The build directory is not written into any object: file names in debug
# information and __FILE__ become relative to the project root.
PREFIX_MAP = [f"-ffile-prefix-map={HERE}=."]

# The helper: sources relative to the project root (the generated
# xensr_msgs.c includes helper_c/frame.c).
HELPER = {
    "output": "xensr/bin/xensr-save-helper",
    "sources": ["helper_c/xensr-save-helper.c", "helper_c/xensr_msgs.c"],
    "pkgs": XEN_PKGS,
}

# Builds of the helper, chosen with XENSR_HELPER_VARIANT (default
# "release").  "debug" suits valgrind and gdb; "sanitize" is an
# AddressSanitizer + UndefinedBehaviorSanitizer build that stops at the
# first error (its NEEDED list then also names the sanitizer runtimes).
HELPER_VARIANTS = {
    "release": ["-O2", "-g"],
    "debug": ["-O0", "-g3"],
    "sanitize": [
        "-O1", "-g", "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
    ],
}

# The simulated host (simhost/): stand-in libraries with the real sonames
# and version nodes of the Xen release being built for (simhost/releases.py).
SIMHOST_SOURCES = ["simhost/domain.c", "simhost/fault.c"]
SIMHOST_LIBS = {
    "libxenctrl": ["simhost/ctrl.c", *SIMHOST_SOURCES],
    "libxenguest": [
        "simhost/guest.c",
        "simhost/save.c",
        "simhost/restore.c",
        *SIMHOST_SOURCES,
    ],
}
SIMHOST_DIR = "xensr/_simhost"
BUILD_INFO = "xensr/_build.py"


def load_releases():
    """simhost/releases.py, loaded by path (xensr is not importable yet)."""
    import importlib.util

    path = os.path.join(HERE, "simhost", "releases.py")
    spec = importlib.util.spec_from_file_location("xensr_simhost_releases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RELEASES = load_releases()

# What the build writes is readable by all, writable by its owner, whatever
# umask the build was started with (it would show in the wheel's modes).
os.umask(0o022)


def pkg_config(*args):
    try:
        out = subprocess.run(
            ["pkg-config", *args], check=True, capture_output=True, text=True
        ).stdout
    except FileNotFoundError:
        sys.exit(
            "xensr: pkg-config not found; on Debian 12 run: "
            "apt-get install pkg-config libxen-dev"
        )
    except subprocess.CalledProcessError as exc:
        # Name the packages asked for, not pkg-config's own options.
        pkgs = " ".join(a for a in args if not a.startswith("-"))
        sys.exit(
            "xensr: Xen development files not found by pkg-config "
            f"({pkgs}): {exc.stderr.strip()}\n"
            "On Debian 12 install them with: apt-get install libxen-dev"
        )
    return shlex.split(out)


def check_xen():
    pkg_config("--exists", "--print-errors", *XEN_PKGS)


def xen_release():
    """The installed Xen's release ("4.20"), from pkg-config; libxenctrl's
    and libxenguest's development files must agree on it."""
    found = {pkg: pkg_config("--modversion", pkg)[0] for pkg in XEN_PKGS[:2]}
    releases = set()
    for pkg, version in found.items():
        try:
            releases.add(RELEASES.release_of(version))
        except ValueError as exc:
            sys.exit(f"xensr: {exc} (pkg-config {pkg})")
    if len(releases) != 1:
        sys.exit(f"xensr: pkg-config reports different Xen versions: {found}")
    return releases.pop()


def cc():
    return shlex.split(os.environ.get("CC", "cc"))


def extra(name):
    return shlex.split(os.environ.get(name, ""))


def run(cmd):
    print(" ".join(shlex.quote(c) for c in cmd))
    subprocess.run(cmd, check=True)


def package_version():
    """xensr.__version__, read without importing xensr: the helper reports it."""
    import ast

    path = os.path.join(HERE, "xensr", "__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "__version__"):
            return ast.literal_eval(node.value)
    sys.exit("xensr: no __version__ in xensr/__init__.py")


def helper_command(out, variant=None):
    """The compiler command line that builds the helper at OUT."""
    variant = variant or os.environ.get("XENSR_HELPER_VARIANT") or "release"
    if variant not in HELPER_VARIANTS:
        sys.exit(
            f"xensr: XENSR_HELPER_VARIANT={variant!r} is not one of "
            f"{', '.join(sorted(HELPER_VARIANTS))}"
        )
    return [
        *cc(), "-std=gnu11", *HELPER_VARIANTS[variant], *WARN, *PREFIX_MAP,
        "-D_GNU_SOURCE", f'-DXENSR_VERSION="{package_version()}"',
        f'-DXENSR_XEN_RELEASE="{xen_release()}"', "-Ihelper_c",
        *pkg_config("--cflags", *HELPER["pkgs"]),
        *extra("CPPFLAGS"), *extra("CFLAGS"), *HELPER["sources"], "-o", out,
        "-Wl,--as-needed", *extra("LDFLAGS"),
        *pkg_config("--libs", *HELPER["pkgs"]),
    ]


def build_helper(outdir, out=None, variant=None):
    out = out or os.path.join(outdir, HELPER["output"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    run(helper_command(out, variant))
    os.chmod(out, 0o755)


# Only the helper, to a path of one's choice (tests build variants so):
#   XENSR_HELPER_ONLY=/tmp/h XENSR_HELPER_VARIANT=sanitize python setup.py
if __name__ == "__main__" and os.environ.get("XENSR_HELPER_ONLY"):
    _out = os.path.abspath(os.environ["XENSR_HELPER_ONLY"])
    os.chdir(HERE)
    check_xen()
    build_helper(HERE, out=_out)
    sys.exit(0)


def simhost_outputs(outdir, release):
    return [os.path.join(outdir, SIMHOST_DIR, RELEASES.soname(lib, release))
            for lib in SIMHOST_LIBS]


def build_simhost(outdir, tempdir, release):
    """Both simulated libraries for RELEASE, against the installed headers
    (the same release: xen_release read it from them)."""
    os.makedirs(tempdir, exist_ok=True)
    for (lib, sources), out in zip(SIMHOST_LIBS.items(),
                                   simhost_outputs(outdir, release)):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        script = os.path.join(tempdir, f"simhost-{lib}.map")
        with open(script, "w", encoding="utf-8") as f:
            f.write(RELEASES.version_script(lib, release))
        cmd = [
            *cc(), "-std=gnu11", "-O2", "-g", *WARN, *PREFIX_MAP, "-D_GNU_SOURCE", "-fPIC",
            "-shared", "-Isimhost", *RELEASES.c_defines(release),
            *pkg_config("--cflags", *XEN_PKGS), *extra("CPPFLAGS"), *extra("CFLAGS"),
            *sources, "-o", out,
            f"-Wl,-soname,{RELEASES.soname(lib, release)}",
            f"-Wl,--version-script={script}",
            "-Wl,--as-needed", "-Wl,-z,defs", *extra("LDFLAGS"),
            *pkg_config("--libs", "xentoollog"),
        ]
        run(cmd)


def write_build_info(outdir, release):
    """xensr/_build.py: what xensr.XEN_VERSION reports, and the libraries
    the helper built here needs (checked before it is spawned)."""
    needed = tuple(RELEASES.soname(lib, release) for lib in RELEASES.LIBRARIES)
    path = os.path.join(outdir, BUILD_INFO)
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            '"""Written by setup.py: the Xen release this build is for."""\n\n'
            f"XEN_VERSION = {release!r}\n"
            f"HELPER_XEN_LIBRARIES = {needed!r}\n"
        )


class BuildExt(build_ext):
    """Build the extension, then the helper and the simulated host's
    libraries beside it."""

    def run(self):
        check_xen()
        release = xen_release()
        super().run()
        outdir = HERE if self.inplace else self.build_lib
        old = os.getcwd()
        os.chdir(HERE)
        try:
            build_helper(outdir)
            build_simhost(outdir, self.build_temp, release)
            write_build_info(outdir, release)
        finally:
            os.chdir(old)

    def get_outputs(self):
        outdir = HERE if self.inplace else self.build_lib
        extra_outputs = [os.path.join(outdir, HELPER["output"]),
                         os.path.join(outdir, BUILD_INFO)]
        extra_outputs += simhost_outputs(outdir, xen_release())
        return super().get_outputs() + extra_outputs


MAN_DIR = "man"         # under the build directory
MAN_INSTALL = "share/man/man1"


def normalise_modes(top):
    """Files under TOP 0644, or 0755 when anyone may execute them;
    directories 0755: what the umask left is not recorded in the wheel."""
    for base, dirs, files in os.walk(top):
        for d in dirs:
            os.chmod(os.path.join(base, d), 0o755)
        for f in files:
            path = os.path.join(base, f)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)


class Build(build):
    """The usual build, then the manual pages from the built package's
    parsers, then file modes made independent of the umask."""

    def run(self):
        super().run()
        mandir = os.path.abspath(os.path.join(self.build_base, MAN_DIR))
        env = dict(os.environ, PYTHONPATH=os.path.abspath(self.build_lib),
                   PYTHONDONTWRITEBYTECODE="1")
        for old in glob.glob(os.path.join(mandir, "*.1")):
            os.unlink(old)
        subprocess.run([sys.executable, "-m", "xensr._manpage", mandir],
                       check=True, env=env, cwd=self.build_base)
        normalise_modes(self.build_lib)
        normalise_modes(mandir)


class InstallData(install_data):
    """The manual pages the build made (their names come from the parsers)."""

    def run(self):
        base = self.get_finalized_command("build").build_base
        self.data_files = [
            (MAN_INSTALL, sorted(glob.glob(os.path.join(base, MAN_DIR, "*.1")))),
        ]
        super().run()


class Sdist(sdist):
    """A tar.gz whose bytes depend only on the files' contents, their
    executable bits and SOURCE_DATE_EPOCH: members sorted, owner root,
    modes 0644/0755, times clamped, no name or time in the gzip header."""

    def make_archive(self, base_name, format, root_dir=None, base_dir=None,
                     owner=None, group=None):
        if format != "gztar":
            return super().make_archive(base_name, format, root_dir, base_dir, owner, group)
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        epoch = int(epoch) if epoch is not None else None
        root_dir = root_dir or os.curdir
        paths = []
        for base, dirs, files in os.walk(os.path.join(root_dir, base_dir)):
            dirs.sort()
            paths.append(base)
            paths += [os.path.join(base, f) for f in sorted(files)]
        archive = base_name + ".tar.gz"

        def member(path):
            info = tar.gettarinfo(path, os.path.relpath(path, root_dir))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isdir() or info.mode & 0o111:
                info.mode = 0o755
            else:
                info.mode = 0o644
            if epoch is not None:
                info.mtime = min(int(info.mtime), epoch)
            return info

        with open(archive, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=epoch or 0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in paths:
                info = member(path)
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        return archive


def license_metadata():
    """MIT, as a License-Expression (PEP 639) where setuptools writes one
    (77 and later); older ones (Debian 12 has 66) write the License field.
    LICENSE is shipped either way (setuptools' default license files)."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) >= 77:
        return {"license_expression": "MIT"}
    return {"license": "MIT"}


def extensions():
    from Cython.Build import cythonize

    ext = Extension(
        "xensr._xc",
        sources=["xensr/_xc.pyx"],
        include_dirs=["xensr"],
        depends=[
            "xensr/_msgs.pxi",
            "xensr/_wire.pxi",
            "xensr/_xc.pxd",
            "xensr/_spawn.h",
            "xensr/_spawn.pxd",
            "xensr/_libc.pxd",
        ],
        extra_compile_args=["-Wno-unused-function", *PREFIX_MAP],
    )
    return cythonize(
        [ext],
        language_level=3,
        compiler_directives={"embedsignature": True},
    )


setup(
    **license_metadata(),
    ext_modules=extensions(),
    # Filled in by InstallData: the pages are named after the subcommands.
    data_files=[(MAN_INSTALL, [])],
    cmdclass={"build": Build, "build_ext": BuildExt, "install_data": InstallData,
              "sdist": Sdist},
)
