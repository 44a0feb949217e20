"""Build steps that pyproject.toml cannot express.

Three kinds of native artifact are built here, all from this tree:

* the Cython extension ``xensr._xc`` (the callout);
* the helper program ``xensr/bin/xensr-save-helper`` (links only
  libxenctrl, libxenguest and libxentoollog);
* the simulated host's ``libxenctrl.so.4.17`` / ``libxenguest.so.4.17``
  (sources in ``simhost/``, see simhost/README.md) in ``xensr/_simhost/``.

Xen is found through pkg-config (Debian 12: ``apt-get install libxen-dev``).
"""

import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

XEN_PKGS = ("xencontrol", "xenguest", "xentoollog")
WARN = ["-Wall", "-Wextra", "-Werror"]
HERE = os.path.dirname(os.path.abspath(__file__))

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

# The simulated host (simhost/): stand-in libraries with the real sonames.
SIMHOST_SOURCES = ["simhost/domain.c", "simhost/fault.c"]
SIMHOST_LIBS = [
    {
        "output": "xensr/_simhost/libxenctrl.so.4.17",
        "soname": "libxenctrl.so.4.17",
        "sources": ["simhost/ctrl.c", *SIMHOST_SOURCES],
        "version_script": "simhost/vers.map",
        "pkgs": ("xentoollog",),
        "cflags_pkgs": XEN_PKGS,
    },
    {
        "output": "xensr/_simhost/libxenguest.so.4.17",
        "soname": "libxenguest.so.4.17",
        "sources": [
            "simhost/guest.c",
            "simhost/save.c",
            "simhost/restore.c",
            *SIMHOST_SOURCES,
        ],
        "version_script": "simhost/vers.map",
        "pkgs": ("xentoollog",),
        "cflags_pkgs": XEN_PKGS,
    },
]


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
        *cc(), "-std=gnu11", *HELPER_VARIANTS[variant], *WARN,
        "-D_GNU_SOURCE", f'-DXENSR_VERSION="{package_version()}"',
        "-Ihelper_c", *pkg_config("--cflags", *HELPER["pkgs"]),
        *extra("CFLAGS"), *HELPER["sources"], "-o", out,
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


def build_simhost(outdir):
    for lib in SIMHOST_LIBS:
        out = os.path.join(outdir, lib["output"])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cmd = [
            *cc(), "-std=gnu11", "-O2", "-g", *WARN, "-D_GNU_SOURCE", "-fPIC",
            "-shared", "-Isimhost",
            *pkg_config("--cflags", *lib["cflags_pkgs"]), *extra("CFLAGS"),
            *lib["sources"], "-o", out,
            f"-Wl,-soname,{lib['soname']}",
            f"-Wl,--version-script={lib['version_script']}",
            "-Wl,--as-needed", "-Wl,-z,defs", *extra("LDFLAGS"),
            *pkg_config("--libs", *lib["pkgs"]),
        ]
        run(cmd)


class BuildExt(build_ext):
    """Build the extension, then the helper and the simulated host's
    libraries beside it."""

    def run(self):
        check_xen()
        super().run()
        outdir = HERE if self.inplace else self.build_lib
        old = os.getcwd()
        os.chdir(HERE)
        try:
            build_helper(outdir)
            build_simhost(outdir)
        finally:
            os.chdir(old)

    def get_outputs(self):
        outdir = HERE if self.inplace else self.build_lib
        extra_outputs = [os.path.join(outdir, HELPER["output"])]
        extra_outputs += [os.path.join(outdir, lib["output"]) for lib in SIMHOST_LIBS]
        return super().get_outputs() + extra_outputs


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
        extra_compile_args=["-Wno-unused-function"],
    )
    return cythonize(
        [ext],
        language_level=3,
        compiler_directives={"embedsignature": True},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
