"""A simulated Xen host for tests: :class:`SimulatedHost` and a pytest fixture.

xensr ships a simulated host ("simhost"): stand-in ``libxenctrl.so.4.X`` and
``libxenguest.so.4.X`` (built from ``simhost/`` into ``xensr/_simhost/``)
with the real sonames and symbol versions of the Xen release xensr was built
for (``xensr.XEN_VERSION``; ``VERS_4.17.0`` on 4.17).  Any save/restore
helper -- xensr's own or Debian's unmodified ``libxl-save-helper`` -- run
with :attr:`SimulatedHost.env` (``LD_LIBRARY_PATH`` with the simulated
libraries first, ``XENSR_SIMHOST_DIR``, and ``XENSR_SIMHOST_FAULT`` when
faults are set) saves and restores simulated domains instead of real ones,
writing and reading real libxc migration streams (v3).  This module is pure
Python; it does not need ``xensr._xc``.

Example::

    with SimulatedHost() as host:
        src = host.create_domain(64, vcpus=2, kind="hvm")
        dst = host.create_empty_domain()
        ... run a save of ``src`` and a restore into ``dst`` with host.env ...
        assert host.memory_digest(src) == host.memory_digest(dst)

What the simulated host does (PV and HVM guests, live saves with a guest
that dirties memory, checkpoints, the precopy policy, its logs and errno
values), its state directory (every file and meta key) and its fault
grammar (every fault, argument and effect) are documented once, in
``simhost/README.md`` of the source tree.  This module reads and writes
that directory and parses that grammar (:func:`parse_fault_spec`);
``tests/simhost/test_grammar.py`` checks that it agrees with the C side on
every fault the README lists.

Renamed in this release, the old names still work (aliases):

* environment: ``XENSR_SIM_DIR`` and ``XENSR_SIM_FAULT`` are read by the
  libraries when ``XENSR_SIMHOST_DIR`` / ``XENSR_SIMHOST_FAULT`` are absent
  (the new name wins when both are set); :attr:`SimulatedHost.env` sets
  the new names and drops inherited old ones;
* :func:`rig_dir` is :func:`simhost_lib_dir`, :func:`rig_available` is
  :func:`simhost_available`, and :attr:`SimulatedHost.rig_dir` is
  :attr:`SimulatedHost.lib_dir`.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import hashlib
import os
import random
import shutil
import signal as _signal
import struct
import tempfile
from pathlib import Path
from typing import (
    Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union,
)

from ._xenlibs import HELPER_XEN_LIBRARIES

__all__ = [
    "SimulatedHost",
    "simulated_host",
    "simhost_lib_dir",
    "simhost_available",
    "rig_dir",
    "rig_available",
    "parse_fault_spec",
    "PAGE_SIZE",
    "MAX_MEMORY_MIB",
    "MAX_VCPUS",
]

PAGE_SIZE = 4096
#: The largest guest :meth:`SimulatedHost.create_domain` makes.
MAX_MEMORY_MIB = 1 << 20
MAX_VCPUS = 128
_PAGES_PER_MIB = (1 << 20) // PAGE_SIZE
_DOMID_FIRST_RESERVED = 0x7ff0       # xen/include/public/xen.h
_DEFAULT_MAX_MIB = 16 * 1024          # restore targets: 16 GiB
# Built with the sonames of the Xen release xensr is built for.
_SIMHOST_LIBS = HELPER_XEN_LIBRARIES
_START_INFO_MAGIC = b"xen-3.0-x86_64"

# The environment the libraries read (simhost/README.md, "Environment").
_ENV_DIR = "XENSR_SIMHOST_DIR"
_ENV_FAULT = "XENSR_SIMHOST_FAULT"
_ENV_AUTO_SUSPEND = "XENSR_SIMHOST_AUTO_SUSPEND"
_OLD_ENV = ("XENSR_SIM_DIR", "XENSR_SIM_FAULT")   # still read when the new are absent

_STATES = ("running", "paused", "suspended", "shutdown")
_RECORD_DESTROYED = "record-destroyed"
_DESTROYED_LOG = "destroyed.log"


def simhost_lib_dir() -> Path:
    """Directory holding the simulated host's libraries (``xensr/_simhost``)."""
    return Path(__file__).resolve().parent / "_simhost"


def simhost_available() -> bool:
    """True when both simulated libraries have been built."""
    d = simhost_lib_dir()
    return bool(_SIMHOST_LIBS) and all((d / name).is_file() for name in _SIMHOST_LIBS)


#: Old name of :func:`simhost_lib_dir`, kept for this release.
rig_dir = simhost_lib_dir
#: Old name of :func:`simhost_available`, kept for this release.
rig_available = simhost_available


# --------------------------------------------------------------------------
# Fault specifications: the grammar of simhost/README.md ("Faults"), also
# parsed in C by simhost/fault.c; tests/simhost/test_grammar.py holds the
# two to the README.

# The names the README's "Argument types" lists (numbers always work).
_ERRNO_NAMES = (
    "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "ENXIO", "E2BIG", "EBADF",
    "EAGAIN", "ENOMEM", "EACCES", "EFAULT", "EBUSY", "EEXIST", "ENODEV",
    "EINVAL", "ENOSPC", "EPIPE", "ERANGE", "ENOSYS", "ENODATA", "ETIMEDOUT",
    "ECONNRESET", "ECANCELED", "EOVERFLOW", "EROFS", "EDQUOT", "ENOTSUP",
)
_SIGNAL_NAMES = (
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1",
    "SEGV", "USR2", "PIPE", "ALRM", "TERM", "SYS", "XCPU", "XFSZ",
)
_HANG_POINTS = (
    "suspend", "postcopy", "checkpoint", "wait_checkpoint",
    "switch_qemu_logdirty", "static_data_done", "precopy_policy",
    "restore_results",
)
_MAX_FAULTS = 16
_ULONG_MAX = (1 << 64) - 1
_LOG_FLOOD_DEFAULT_LEN = 80
_LOG_FLOOD_MAX_LEN = 64 << 20

FaultArgs = Tuple[Union[int, str], ...]
Fault = Tuple[str, FaultArgs, Optional[str]]


def _parse_uint(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > _ULONG_MAX:
        raise ValueError(f"{what}: expected a decimal number, got {text!r}")
    return int(text)


def _parse_errno(text: str) -> int:
    if text.isdigit() and text.isascii():
        value = int(text)
        if not 0 < value <= 4095:
            raise ValueError(f"errno out of range: {text}")
        return value
    if text not in _ERRNO_NAMES:
        raise ValueError(f"unknown errno name {text!r}")
    return int(getattr(_errno, text))


def _parse_signal(text: str) -> int:
    if text.isdigit() and text.isascii():
        value = int(text)
        if not 0 < value < _signal.NSIG:
            raise ValueError(f"signal out of range: {text}")
        return value
    name = text[3:] if text.startswith("SIG") else text
    if name not in _SIGNAL_NAMES:
        raise ValueError(f"unknown signal name {text!r}")
    return int(_signal.Signals["SIG" + name])


def _args_open_fail(args: Sequence[str]) -> FaultArgs:
    return (_parse_errno(args[0]) if args else _errno.ENOENT,)


def _args_fail_at_page(args: Sequence[str]) -> FaultArgs:
    return (_parse_uint(args[0], "N"),
            _parse_errno(args[1]) if len(args) == 2 else _errno.EIO)


def _args_signal_at_page(args: Sequence[str]) -> FaultArgs:
    return (_parse_uint(args[0], "N"), _parse_signal(args[1]))


def _args_hang_at(args: Sequence[str]) -> FaultArgs:
    if len(args) == 2 and args[0] == "page":
        return ("page", _parse_uint(args[1], "N"))
    if len(args) == 1 and args[0] in _HANG_POINTS:
        return (args[0],)
    raise ValueError(f"POINT must be page:N or one of {', '.join(_HANG_POINTS)}")


def _args_log_flood(args: Sequence[str]) -> FaultArgs:
    count = _parse_uint(args[0], "N")
    length = _parse_uint(args[1], "LEN") if len(args) == 2 else _LOG_FLOOD_DEFAULT_LEN
    if not 0 < length <= _LOG_FLOOD_MAX_LEN:
        raise ValueError("LEN must be 1..64 MiB")
    return (count, length)


def _one_count(what: str) -> Callable[[Sequence[str]], FaultArgs]:
    return lambda args: (_parse_uint(args[0], what),)


# name: (usage, fewest and most arguments, scopes allowed, argument parser);
# the rows of the README's fault table, in its order.
_ANY_SCOPE = (None, "save", "restore")
_FAULTS: Dict[str, Tuple[str, int, int, Tuple[Optional[str], ...],
                         Callable[[Sequence[str]], FaultArgs]]] = {
    "open-fail": ("[:ERRNO] and no @scope", 0, 1, (None,), _args_open_fail),
    "fail-at-page": (":N[:ERRNO]", 1, 2, _ANY_SCOPE, _args_fail_at_page),
    "signal-at-page": (":N:SIGNAME", 2, 2, _ANY_SCOPE, _args_signal_at_page),
    "hang-at": (":POINT or :page:N", 1, 2, _ANY_SCOPE, _args_hang_at),
    "stall": (":MS", 1, 1, _ANY_SCOPE, _one_count("MS")),
    "log-flood": (":N[:LEN]", 1, 2, _ANY_SCOPE, _args_log_flood),
    "truncate-stream": (":BYTES and applies to saves only", 1, 1, (None, "save"),
                        _one_count("BYTES")),
    "garbage-control": (":BYTES", 1, 1, _ANY_SCOPE, _one_count("BYTES")),
    "exit-early": ("no argument", 0, 0, _ANY_SCOPE, lambda args: ()),
}


def _parse_item(item: str) -> Fault:
    body: str = item
    scope: Optional[str] = None
    if "@" in item:
        body, scope = item.rsplit("@", 1)
        if scope not in ("save", "restore"):
            raise ValueError("scope must be @save or @restore")
    name, *args = body.split(":")
    if name not in _FAULTS:
        raise ValueError(f"unknown fault {name!r}")
    usage, fewest, most, scopes, parse = _FAULTS[name]
    if not fewest <= len(args) <= most or scope not in scopes:
        raise ValueError(f"takes {usage}")
    return (name, parse(args), scope)


def parse_fault_spec(spec: str) -> List[Fault]:
    """Parse a ``XENSR_SIMHOST_FAULT`` value into ``(name, args, scope)`` tuples.

    ``args`` holds every argument, defaults filled in, errno values and
    signals as numbers; ``scope`` is ``"save"``, ``"restore"`` or None.
    Raises :class:`ValueError` naming the bad item, as the simulated host
    would refuse it (the grammar is simhost/README.md's "Faults").
    """
    if not isinstance(spec, str):
        raise TypeError(f"fault spec must be a str, not {type(spec).__name__}")
    out = []
    for item in spec.split(","):
        if not item:
            continue
        try:
            out.append(_parse_item(item))
        except ValueError as exc:
            raise ValueError(f"bad fault {item!r}: {exc}") from None
    if len(out) > _MAX_FAULTS:
        raise ValueError(f"more than {_MAX_FAULTS} faults")
    return out


# --------------------------------------------------------------------------
# Meta files

def _meta_parse(text: str) -> Dict[str, str]:
    meta: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            meta[key] = value
    return meta


def _meta_format(meta: Dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in meta.items())


def _typed(value: str) -> Union[int, str]:
    return int(value) if value.isdigit() else value


class _MetaLock:
    """flock(2) of ``dom<N>/lock``, which guards ``dom<N>/meta``."""

    def __init__(self, domdir: Path, exclusive: bool):
        self.path = domdir / "lock"
        self.how = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self.fd = -1

    def __enter__(self) -> "_MetaLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, self.how)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self.fd = -1


# --------------------------------------------------------------------------
# The host

class SimulatedHost:
    """A simulated Xen host: a state directory the simulated libraries work on.

    ``state_dir`` defaults to a new temporary directory, removed by
    :meth:`close` (or on leaving the ``with`` block) unless ``keep=True``.
    An existing directory passed in is used as is and never removed.

    A save suspends a guest as on real Xen: the toolstack's ``suspend``
    callback must suspend it (here with :meth:`suspend`); a save whose
    guest nothing suspended fails ("Domain has not been suspended"), so
    that a toolstack without a working suspend path cannot pass its tests
    here.  ``auto_suspend=True`` makes guests suspend by themselves as soon
    as the suspend request is answered (xensr answers it itself for a
    callbacks object without ``suspend``).
    """

    def __init__(self, state_dir: Union[str, "os.PathLike[str]", None] = None, *,
                 faults: Optional[str] = None, keep: bool = False,
                 auto_suspend: bool = False):
        if state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="xensr-simhost-"))
            self._owned = not keep
        else:
            self._state_dir = Path(state_dir)
            self._state_dir.mkdir(parents=True, exist_ok=True)
            self._owned = False
        self._faults: List[str] = []
        self._created = 0
        self._last_domid = 0            # the domid _install allocated last
        self._closed = False
        self.auto_suspend = bool(auto_suspend)
        if faults:
            self.set_fault(faults)

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> "SimulatedHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the state directory if this host created it."""
        if self._closed:
            return
        self._closed = True
        if self._owned:
            shutil.rmtree(self._state_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<SimulatedHost {str(self._state_dir)!r} faults={self.fault_spec!r}>"

    # -- environment --------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def lib_dir(self) -> Path:
        """Directory of the simulated libraries (``xensr/_simhost``)."""
        return simhost_lib_dir()

    @property
    def rig_dir(self) -> Path:
        """Old name of :attr:`lib_dir`, kept for this release."""
        return self.lib_dir

    @property
    def env_vars(self) -> Dict[str, str]:
        """Only the variables the simulated host needs (merged into :attr:`env`)."""
        old = os.environ.get("LD_LIBRARY_PATH", "")
        ld = str(self.lib_dir) + (":" + old if old else "")
        out = {"LD_LIBRARY_PATH": ld, _ENV_DIR: str(self._state_dir)}
        if self._faults:
            out[_ENV_FAULT] = self.fault_spec
        if self.auto_suspend:
            out[_ENV_AUTO_SUSPEND] = "1"
        return out

    @property
    def env(self) -> Dict[str, str]:
        """The environment for a helper: ``os.environ`` plus
        ``LD_LIBRARY_PATH`` (the simulated libraries first),
        ``XENSR_SIMHOST_DIR`` and, when faults are set,
        ``XENSR_SIMHOST_FAULT`` (with ``auto_suspend``,
        ``XENSR_SIMHOST_AUTO_SUSPEND=1``).  Inherited fault specs, auto
        suspension and the old names (``XENSR_SIM_DIR``,
        ``XENSR_SIM_FAULT``) are dropped, so that only this host's settings
        apply."""
        env = dict(os.environ)
        for name in (_ENV_FAULT, _ENV_AUTO_SUSPEND, *_OLD_ENV):
            env.pop(name, None)
        env.update(self.env_vars)
        return env

    # -- faults -------------------------------------------------------------

    @property
    def fault_spec(self) -> str:
        return ",".join(self._faults)

    def set_fault(self, spec: str) -> None:
        """Replace the faults with ``spec`` (validated; ValueError if bad)."""
        parse_fault_spec(spec)
        self._faults = [item for item in spec.split(",") if item]

    def add_fault(self, spec: str) -> None:
        """Add faults to those already set."""
        parse_fault_spec(",".join(self._faults + [spec]))
        self._faults.extend(item for item in spec.split(",") if item)

    def clear_faults(self) -> None:
        self._faults = []

    # -- domains ------------------------------------------------------------

    def _domdir(self, domid: int) -> Path:
        if isinstance(domid, bool) or not isinstance(domid, int):
            raise TypeError(f"domid must be an int, not {type(domid).__name__}")
        d = self._state_dir / f"dom{domid}"
        if not (d / "meta").is_file():
            raise LookupError(f"no simulated domain {domid} in {self._state_dir}")
        return d

    def _install(self, tmpdir: Path, meta: Dict[str, str]) -> int:
        """Rename a complete domain directory to a free dom<N>.

        Tries the domids after the one this host allocated last (as Xen
        does), wrapping round to 1, so that creating N domains costs O(N)
        tries rather than O(N^2).  The rename stays the arbiter: another
        process (or host object) on the same state directory taking a
        domid first only costs a retry with the next one.
        """
        domid = self._last_domid + 1
        for _ in range(_DOMID_FIRST_RESERVED - 1):
            if domid >= _DOMID_FIRST_RESERVED:
                domid = 1
            meta["domid"] = str(domid)
            (tmpdir / "meta").write_text(_meta_format(meta))
            try:
                os.rename(tmpdir, self._state_dir / f"dom{domid}")
                self._last_domid = domid
                return domid
            except OSError as exc:
                if exc.errno not in (_errno.EEXIST, _errno.ENOTEMPTY):
                    raise
            domid += 1
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise OSError(_errno.ENOSPC, "no free simulated domid")

    def create_domain(self, memory_mib: int, vcpus: int = 1, kind: str = "pv", *,
                      dirty_pages: int = 256, seed: Optional[int] = None,
                      state: str = "running", tsc_khz: int = 2400000,
                      ignore_suspend: bool = False, name: Optional[str] = None,
                      dirty_rate: int = 0, working_set: Optional[int] = None) -> int:
        """Create a running guest of ``memory_mib`` MiB and return its domid.

        ``dirty_pages`` pages are dirtied per round while it runs during a
        live save; ``seed`` seeds both its initial memory and that workload
        (default: distinct per domain of this host, deterministic).
        ``name``: the domain's name (unique on the host; default
        ``domain-<domid>``).
        ``dirty_rate`` pages per second of wall time are dirtied too while
        it runs, drawn from its first ``working_set`` pages (default: all,
        written as 0).
        """
        memory_mib = _check_int("memory_mib", memory_mib, 1, MAX_MEMORY_MIB)
        vcpus = _check_int("vcpus", vcpus, 1, MAX_VCPUS)
        dirty_pages = _check_int("dirty_pages", dirty_pages, 0, 1 << 30)
        dirty_rate = _check_int("dirty_rate", dirty_rate, 0, 1 << 40)
        tsc_khz = _check_int("tsc_khz", tsc_khz, 1, 0xffffffff)
        if kind not in ("pv", "hvm"):
            raise ValueError(f"kind must be 'pv' or 'hvm', not {kind!r}")
        if state not in _STATES:
            raise ValueError(f"state must be one of {_STATES}, not {state!r}")
        self._created += 1
        if seed is None:
            seed = self._created
        seed = _check_int("seed", seed, 0, (1 << 64) - 1)

        nr = memory_mib * _PAGES_PER_MIB
        console, store = nr - 1, nr - 2
        meta = {
            "domid": "0", "kind": kind, "vcpus": str(vcpus),
            "nr_pages": str(nr), "max_pages": str(nr), "state": state,
            "store_gfn": str(store), "console_gfn": str(console),
            "store_evtchn": "1", "console_evtchn": "2",
            "store_domid": "0", "console_domid": "0",
        }
        if kind == "pv":
            frames = (nr + 511) // 512
            start_info = nr - 3
            p2m = start_info - frames
            meta["start_info_pfn"] = str(start_info)
            meta["p2m_pfn"] = str(p2m)
        meta.update({
            "logdirty": "0", "dirty_pages": str(dirty_pages), "seed": str(seed),
            "tsc_khz": str(tsc_khz), "ignore_suspend": "1" if ignore_suspend else "0",
        })
        if name is not None:
            if not name or "\n" in name or "=" in name:
                raise ValueError(f"bad domain name {name!r}")
            self.lookup_free(name)
            meta["name"] = name
        meta["dirty_rate"] = str(dirty_rate)
        meta["dirty_working_set"] = str(
            0 if working_set is None else _check_int("working_set", working_set, 1, nr))

        tmpdir = Path(tempfile.mkdtemp(prefix=".new-", dir=self._state_dir))
        try:
            with open(tmpdir / "memory", "wb") as f:
                _fill_memory(f, nr, seed)
                if kind == "pv":
                    f.seek(p2m * PAGE_SIZE)
                    f.write(struct.pack(f"<{nr}Q", *range(nr)))
                    f.seek(start_info * PAGE_SIZE)
                    f.write(_start_info(nr, store, console))
            return self._install(tmpdir, meta)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise

    def create_empty_domain(self, kind: Optional[str] = None, vcpus: Optional[int] = None, *,
                            max_mib: int = _DEFAULT_MAX_MIB, dirty_pages: int = 256,
                            seed: Optional[int] = None) -> int:
        """Create a restore target: no memory, paused.

        ``kind=None`` adopts the stream's type; ``vcpus=None`` adopts the
        stream's vCPU count.  ``max_mib`` bounds how much memory a restore
        may populate.  ``dirty_pages``/``seed`` are the workload it will
        run if it is saved again after the restore.
        """
        if kind not in (None, "pv", "hvm"):
            raise ValueError(f"kind must be None, 'pv' or 'hvm', not {kind!r}")
        vcpus = 0 if vcpus is None else _check_int("vcpus", vcpus, 1, MAX_VCPUS)
        max_mib = _check_int("max_mib", max_mib, 1, MAX_MEMORY_MIB)
        dirty_pages = _check_int("dirty_pages", dirty_pages, 0, 1 << 30)
        self._created += 1
        if seed is None:
            seed = self._created
        meta = {
            "domid": "0", "kind": kind or "", "vcpus": str(vcpus),
            "nr_pages": "0", "max_pages": str(max_mib * _PAGES_PER_MIB),
            "state": "paused", "logdirty": "0",
            "dirty_pages": str(dirty_pages), "seed": str(seed),
            "ignore_suspend": "0",
        }
        tmpdir = Path(tempfile.mkdtemp(prefix=".new-", dir=self._state_dir))
        try:
            (tmpdir / "memory").touch()
            return self._install(tmpdir, meta)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise

    def domain_ids(self) -> List[int]:
        ids = []
        for entry in self._state_dir.iterdir():
            name = entry.name
            if name.startswith("dom") and name[3:].isdigit() and (entry / "meta").is_file():
                ids.append(int(name[3:]))
        return sorted(ids)

    def destroy_domain(self, domid: int) -> None:
        """Remove a domain (its directory) from the host."""
        d = self._domdir(domid)
        gone = d.with_name(f".dead-{domid}-{os.getpid()}")
        os.rename(d, gone)
        shutil.rmtree(gone, ignore_errors=True)

    def read_meta(self, domid: int) -> Dict[str, str]:
        """The raw meta of a domain (strings)."""
        d = self._domdir(domid)
        with _MetaLock(d, exclusive=False):
            return _meta_parse((d / "meta").read_text())

    def update_domain(self, domid: int, **values: Union[int, str, bool]) -> None:
        """Set meta keys of a domain atomically (e.g. ``state="paused"``)."""
        d = self._domdir(domid)
        if "state" in values and values["state"] not in _STATES:
            raise ValueError(f"state must be one of {_STATES}")
        for key, value in values.items():
            text = str(int(value)) if isinstance(value, bool) else str(value)
            if "\n" in text or "=" in key or "\n" in key:
                raise ValueError(f"bad meta entry {key!r}={text!r}")
        with _MetaLock(d, exclusive=True):
            meta = _meta_parse((d / "meta").read_text())
            for key, value in values.items():
                meta[key] = str(int(value)) if isinstance(value, bool) else str(value)
            tmp = d / f"meta.tmp.{os.getpid()}"
            tmp.write_text(_meta_format(meta))
            os.replace(tmp, d / "meta")

    def pause(self, domid: int) -> None:
        self._exists(domid)
        self.update_domain(domid, state="paused")

    def suspend(self, domid: int, timeout: float = 60.0) -> None:
        """Suspends the guest, as a toolstack's ``suspend`` callback does on
        real Xen (asking the guest and waiting for it).  A guest whose meta
        says ``ignore_suspend=1`` never acknowledges: SuspendTimeout at
        once (the simulated guest would never answer), state unchanged."""
        self._exists(domid)
        if self.read_meta(domid).get("ignore_suspend") == "1":
            from .errors import SuspendTimeout

            raise SuspendTimeout(
                f"domain {domid} did not acknowledge the suspend request "
                f"within {timeout:g} s", domid)
        self.update_domain(domid, state="suspended")

    def unpause(self, domid: int) -> None:
        self._exists(domid)
        self.update_domain(domid, state="running")

    # -- the toolstack interface (xensr.toolstack.Toolstack) -----------------

    def _exists(self, domid: int) -> None:
        from .errors import DomainNotFound

        try:
            self._domdir(domid)
        except LookupError:
            raise DomainNotFound(f"no domain {domid}", domid) from None

    def domain_name(self, domid: int) -> str:
        """The name given at creation or by :meth:`rename`; an unnamed
        domain is ``domain-<domid>``."""
        self._exists(domid)
        return self.read_meta(domid).get("name") or f"domain-{domid}"

    def lookup(self, name: str) -> int:
        """The domid of the domain named ``name`` (DomainNotFound if none)."""
        from .errors import DomainNotFound

        for domid in self.domain_ids():
            try:
                if self.domain_name(domid) == name:
                    return domid
            except DomainNotFound:
                continue          # destroyed meanwhile
        raise DomainNotFound(f"no domain named {name!r}")

    def domain_type(self, domid: int) -> str:
        self._exists(domid)
        return self.read_meta(domid).get("kind") or "pv"

    def domain_config(self, domid: int) -> bytes:
        """The libxl JSON configuration: the one the domain was created
        from (:meth:`create_incoming`), with its current name; else one
        made from its meta (type, name, vCPUs, memory)."""
        import json

        self._exists(domid)
        meta = self.read_meta(domid)
        path = self._domdir(domid) / "config.json"
        try:
            config: Dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            kind = meta.get("kind") or "pv"
            nr = int(meta.get("nr_pages") or 0)
            memkb = nr * (PAGE_SIZE // 1024)
            config = {
                "c_info": {"type": kind, "name": "",
                           "uuid": _uuid_of(self._state_dir, domid, meta.get("seed", ""))},
                "b_info": {"max_vcpus": int(meta.get("vcpus") or 1),
                           "max_memkb": memkb, "target_memkb": memkb,
                           "type": {kind: {}}},
            }
        config.setdefault("c_info", {})["name"] = self.domain_name(domid)
        return json.dumps(config, indent=4).encode("utf-8")

    def resume(self, domid: int) -> None:
        """Suspend-cancel resume: a suspended (or paused) guest runs again."""
        self._exists(domid)
        self.update_domain(domid, state="running")

    def rename(self, domid: int, name: str) -> None:
        """Names are unique on a host: NameInUse if another domain has it."""
        from .toolstack import NameInUse

        self._exists(domid)
        if not name or "\n" in name or "=" in name:
            raise ValueError(f"bad domain name {name!r}")
        for other in self.domain_ids():
            if other != domid and self.read_meta(other).get("name") == name:
                raise NameInUse(f"domain with name {name!r} already exists "
                                f"(domain {other})", domid)
        self.update_domain(domid, name=name)

    def destroy(self, domid: int) -> None:
        """Destroys the domain; with :attr:`record_destroyed` set first
        notes its name, state and memory digest (:meth:`destroyed`)."""
        self._exists(domid)
        if self.record_destroyed:
            meta = self.read_meta(domid)
            line = (f"domid={domid} name={self.domain_name(domid)} "
                    f"state={meta.get('state', '')} logdirty={meta.get('logdirty', '0')} "
                    f"memory={self.memory_digest(domid)}\n")
            with open(self._state_dir / _DESTROYED_LOG, "a") as f:
                f.write(line)
        self.destroy_domain(domid)

    @property
    def record_destroyed(self) -> bool:
        """Whether :meth:`destroy` records what it destroyed (a file in the
        state directory, so every process using it sees the setting): tests
        compare a migrated guest with its source that way."""
        return (self._state_dir / _RECORD_DESTROYED).exists()

    @record_destroyed.setter
    def record_destroyed(self, on: bool) -> None:
        flag = self._state_dir / _RECORD_DESTROYED
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def destroyed(self) -> List[Dict[str, str]]:
        """What :meth:`destroy` recorded, oldest first: ``domid``,
        ``name``, ``state``, ``logdirty`` and ``memory`` (sha256)."""
        try:
            text = (self._state_dir / _DESTROYED_LOG).read_text()
        except FileNotFoundError:
            return []
        return [dict(item.split("=", 1) for item in line.split(" "))
                for line in text.splitlines() if line]

    def create_incoming(self, config: bytes, name: str) -> int:
        """A paused, empty domain to receive a migration into, from the
        libxl JSON ``config``: its type (``c_info.type``), vCPUs
        (``b_info.max_vcpus``) and memory (``b_info.max_memkb``, the most
        a restore may populate), named ``name``."""
        import json

        from .errors import ToolstackError

        try:
            text = config.decode("utf-8").rstrip("\0")
            cfg = json.loads(text)
            c_info, b_info = cfg.get("c_info") or {}, cfg.get("b_info") or {}
            kind = c_info.get("type") or "pv"
            vcpus = int(b_info.get("max_vcpus") or 1)
            memkb = int(b_info.get("max_memkb") or b_info.get("target_memkb") or 0)
        except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
            raise ToolstackError(f"cannot build a domain from the configuration: {e}") from e
        if kind not in ("pv", "hvm"):
            raise ToolstackError(f"the simulated host has no {kind!r} guests")
        if memkb <= 0:
            raise ToolstackError("the configuration gives no memory size (b_info.max_memkb)")
        self.lookup_free(name)
        max_mib = max(1, -(-memkb // 1024))
        domid = self.create_empty_domain(kind, vcpus, max_mib=max_mib)
        try:
            (self._domdir(domid) / "config.json").write_text(text)
            self.rename(domid, name)
        except BaseException:
            self.destroy_domain(domid)
            raise
        return domid

    def lookup_free(self, name: str) -> None:
        """NameInUse if a domain is called ``name``."""
        from .errors import DomainNotFound
        from .toolstack import NameInUse

        try:
            other = self.lookup(name)
        except DomainNotFound:
            return
        raise NameInUse(f"domain with name {name!r} already exists (domain {other})")

    def restore_parameters(self, domid: int) -> Dict[str, Any]:
        """The event channels and backend domains the restore helper is
        given (those of :meth:`create_domain`'s guests) and the type."""
        self._exists(domid)
        return {"store_evtchn": 1, "console_evtchn": 2, "store_domid": 0,
                "console_domid": 0, "type": self.read_meta(domid).get("kind") or "pv"}

    def restored(self, domid: int, store_gfn: int, console_gfn: int) -> None:
        """Records the ring frames the restore reported."""
        self.update_domain(domid, store_gfn=store_gfn, console_gfn=console_gfn)

    def domain_state(self, domid: int) -> Dict[str, object]:
        """A domain's state: every meta key (numbers as ints), plus
        ``memory_mib`` (float if not whole), ``kind`` (None when not yet
        set) and ``logdirty`` / ``ignore_suspend`` as bools."""
        meta = self.read_meta(domid)
        out: Dict[str, object] = {k: _typed(v) for k, v in meta.items()}
        nr = int(meta.get("nr_pages", "0") or 0)
        out["nr_pages"] = nr
        mib = nr / _PAGES_PER_MIB
        out["memory_mib"] = int(mib) if mib.is_integer() else mib
        out["kind"] = meta.get("kind") or None
        out["logdirty"] = meta.get("logdirty") == "1"
        out["ignore_suspend"] = meta.get("ignore_suspend") == "1"
        return out

    def memory_path(self, domid: int) -> Path:
        return self._domdir(domid) / "memory"

    def memory_digest(self, domid: int) -> str:
        """sha256 (hex) of the domain's memory, all ``nr_pages`` pages."""
        h = hashlib.sha256()
        with open(self.memory_path(domid), "rb") as f:
            for block in iter(lambda: f.read(4 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def read_pages(self, domid: int, pfn: int, count: int = 1) -> bytes:
        """Read ``count`` pages from ``pfn``."""
        pfn = _check_int("pfn", pfn, 0, 1 << 52)
        count = _check_int("count", count, 0, 1 << 30)
        with open(self.memory_path(domid), "rb") as f:
            f.seek(pfn * PAGE_SIZE)
            data = f.read(count * PAGE_SIZE)
        if len(data) != count * PAGE_SIZE:
            raise ValueError(f"pages {pfn}..{pfn + count - 1} beyond domain {domid}'s memory")
        return data

    def write_pages(self, domid: int, pfn: int, data: bytes) -> None:
        """Write whole pages at ``pfn`` (as the guest would)."""
        pfn = _check_int("pfn", pfn, 0, 1 << 52)
        if len(data) % PAGE_SIZE:
            raise ValueError("data must be a whole number of pages")
        nr = int(self.read_meta(domid).get("nr_pages", "0"))
        if pfn + len(data) // PAGE_SIZE > nr:
            raise ValueError(f"pages beyond domain {domid}'s {nr} pages")
        with open(self.memory_path(domid), "r+b") as f:
            f.seek(pfn * PAGE_SIZE)
            f.write(data)


def _uuid_of(state_dir: Path, domid: int, seed: str) -> str:
    """A stable uuid for a simulated domain without a configuration."""
    h = hashlib.sha256(f"{state_dir}:{domid}:{seed}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def _fill_memory(f: BinaryIO, nr_pages: int, seed: int) -> None:
    """Deterministic guest memory: pages drawn from a 1 MiB pseudo-random
    pool (seeded), rotated per MiB, each stamped with (seed, pfn) in its
    first 16 bytes so that every page differs."""
    pool_pages = _PAGES_PER_MIB
    pool = random.Random(seed).randbytes(pool_pages * PAGE_SIZE)
    stamp = struct.Struct("<QQ")
    pfn = 0
    while pfn < nr_pages:
        n = min(pool_pages, nr_pages - pfn)
        rot = (pfn // pool_pages * 37) % pool_pages * PAGE_SIZE
        chunk = bytearray(pool[rot:] + pool[:rot])
        del chunk[n * PAGE_SIZE:]
        for i in range(n):
            stamp.pack_into(chunk, i * PAGE_SIZE, seed, pfn + i)
        f.write(chunk)
        pfn += n


def _start_info(nr_pages: int, store: int, console: int) -> bytes:
    """struct start_info (x86_64): magic, nr_pages, shared_info, flags,
    store_mfn, store_evtchn, console.domU.{mfn,evtchn}."""
    page = bytearray(PAGE_SIZE)
    page[0:len(_START_INFO_MAGIC)] = _START_INFO_MAGIC
    struct.pack_into("<QQI", page, 32, nr_pages, 0, 0)
    struct.pack_into("<QI", page, 56, store, 1)
    struct.pack_into("<QI", page, 72, console, 2)
    return bytes(page)


def _make_fixture() -> Any:
    import pytest

    @pytest.fixture
    def simulated_host(tmp_path: Path) -> Iterator[SimulatedHost]:
        """A :class:`SimulatedHost` in the test's ``tmp_path`` (guests
        suspend only when the toolstack suspends them)."""
        with SimulatedHost(tmp_path / "simhost") as host:
            yield host

    return simulated_host


def __getattr__(name: str) -> Any:
    # The pytest fixture is built on first use, so that importing
    # xensr.testing does not import pytest.
    if name == "simulated_host":
        fixture = _make_fixture()
        globals()["simulated_host"] = fixture
        return fixture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
