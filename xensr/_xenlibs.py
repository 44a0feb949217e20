"""The Xen release this build of xensr is for, and the check that the host
has it before xensr's own helper is spawned.

setup.py writes ``xensr/_build.py`` (XEN_VERSION, HELPER_XEN_LIBRARIES) when
it builds the helper.  The helper links libxenctrl/libxenguest by a soname
that names the Xen minor release (``libxenctrl.so.4.17``); on a host with
another release the dynamic loader would stop it before its first frame
with only "cannot open shared object file" on stderr, so xensr looks for
the libraries first and says which release is missing and which is there.
"""

from __future__ import annotations

import errno
import glob
import importlib
import os
import re
import sysconfig
from typing import Iterable, List, Optional, Sequence, Tuple

from .errors import HelperStartError

_SYSTEM_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")
_LD_CACHE = "/etc/ld.so.cache"


def _build_info() -> Tuple[Optional[str], Tuple[str, ...]]:
    try:
        info = importlib.import_module("xensr._build")
    except ImportError:     # a source tree not built yet
        return None, ()
    return str(info.XEN_VERSION), tuple(info.HELPER_XEN_LIBRARIES)


#: The Xen release ("4.17", "4.20", ...) xensr was built for, or None when
#: it has not been built.
XEN_VERSION, HELPER_XEN_LIBRARIES = _build_info()


def _env_value(env: Optional[Sequence[bytes]], name: str) -> str:
    """NAME's value in ENV (``NAME=value`` entries; None: this process's)."""
    if env is None:
        return os.environ.get(name, "")
    prefix = name.encode() + b"="
    for entry in env:
        if entry.startswith(prefix):
            return os.fsdecode(entry[len(prefix):])
    return ""


def _search_dirs(env: Optional[Sequence[bytes]]) -> List[str]:
    """Where the loader looks besides its cache: LD_LIBRARY_PATH, then the
    system directories (the multiarch ones first)."""
    dirs = [d for d in _env_value(env, "LD_LIBRARY_PATH").replace(";", ":").split(":") if d]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs += [f"/lib/{multiarch}", f"/usr/lib/{multiarch}"]
    return dirs + list(_SYSTEM_DIRS)


def _cached_paths(cache: str) -> bytes:
    try:
        with open(cache, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _found(soname: str, dirs: Iterable[str], cache: bytes) -> bool:
    if b"/" + soname.encode() + b"\0" in cache:
        return True
    return any(os.path.exists(os.path.join(d, soname)) for d in dirs)


def _releases_present(dirs: Iterable[str], cache: bytes) -> List[str]:
    """The Xen releases whose libxenctrl the loader could find."""
    found = {m.decode() for m in re.findall(rb"/libxenctrl\.so\.(\d+\.\d+)\0", cache)}
    for d in dirs:
        for path in glob.glob(os.path.join(glob.escape(d), "libxenctrl.so.*.*")):
            m = re.fullmatch(r"libxenctrl\.so\.(\d+\.\d+)", os.path.basename(path))
            if m:
                found.add(m.group(1))
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def check_helper_libraries(helper: str, env: Optional[Sequence[bytes]],
                           *, cache: str = _LD_CACHE) -> None:
    """Raise HelperStartError (ELIBACC) naming both releases when HELPER is
    xensr's own helper and the libraries it was built against are not where
    its loader will look.  Other helpers are not checked: xensr does not
    know what they link."""
    if not HELPER_XEN_LIBRARIES or not _is_own_helper(helper):
        return
    dirs = _search_dirs(env)
    paths = _cached_paths(cache)
    missing = [lib for lib in HELPER_XEN_LIBRARIES if not _found(lib, dirs, paths)]
    if not missing:
        return
    present = _releases_present(dirs, paths)
    have = (f"this host has Xen {', '.join(present)}" if present
            else "this host has no Xen libraries")
    raise HelperStartError(
        errno.ELIBACC,
        f"xensr's helper was built for Xen {XEN_VERSION} and needs "
        f"{', '.join(missing)}, but {have}: build xensr on this host "
        "(pip install from source) for the Xen it has",
        helper)


def _own_helper() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "xensr-save-helper")


def _is_own_helper(helper: str) -> bool:
    try:
        return os.path.samefile(helper, _own_helper())
    except OSError:
        return False
