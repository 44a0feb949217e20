"""A simulated Xen host for tests: :class:`SimulatedHost` and a pytest fixture.

xensr ships a test rig: simulated ``libxenctrl.so.4.17`` and
``libxenguest.so.4.17`` (in ``xensr/_rig/``) with the real sonames and symbol
version ``VERS_4.17.0``.  Any save/restore helper -- xensr's own or Debian's
unmodified ``libxl-save-helper`` -- run with :attr:`SimulatedHost.env`
(``LD_LIBRARY_PATH`` with the rig first, ``XENSR_SIM_DIR``, and
``XENSR_SIM_FAULT`` when faults are set) saves and restores simulated
domains instead of real ones, writing and reading real libxc migration
streams (v3).  This module is pure Python; it does not need ``xensr._xc``.

Example::

    with SimulatedHost() as host:
        src = host.create_domain(64, vcpus=2, kind="hvm")
        dst = host.create_empty_domain()
        ... run a save of ``src`` and a restore into ``dst`` with host.env ...
        assert host.memory_digest(src) == host.memory_digest(dst)

State directory (``XENSR_SIM_DIR``)
-----------------------------------
``dom<N>/meta``
    ``key=value`` lines, replaced atomically (write ``meta.tmp.<pid>``,
    rename) under an exclusive ``flock`` of ``dom<N>/lock``.
``dom<N>/memory``
    Guest memory: page *P* (4096 bytes) at offset ``P*4096``; the rig maps it
    shared, so saving a 1 GiB guest takes seconds.
``dom<N>/oplock``
    Held by the rig for the whole of a save or restore; a second operation on
    the same domain fails with ``EBUSY``.

A domain directory is created complete under a temporary name and renamed to
``dom<N>``; the rename fails when ``dom<N>`` exists, so concurrent creators
(processes or threads) never share a domid.

Meta keys: ``domid``, ``kind`` (``pv``, ``hvm``, or empty for a restore
target that adopts the stream's type), ``vcpus``, ``nr_pages``,
``max_pages``, ``state`` (``running``, ``paused``, ``suspended``,
``shutdown``), ``store_gfn``, ``console_gfn``, ``store_evtchn``,
``console_evtchn``, ``store_domid``, ``console_domid``, ``start_info_pfn``
and ``p2m_pfn`` (PV), ``logdirty`` (0/1, on during a live save),
``dirty_pages`` and ``seed`` (the workload), ``tsc_khz``,
``ignore_suspend``, and the results ``save_iterations``, ``save_pages``,
``save_result``, ``restore_result``, ``restore_stream_type``.

Guest layout: memory is filled with deterministic pseudo-random bytes (a
1 MiB pool drawn from ``seed``, each page stamped with ``(seed, pfn)`` as two
little-endian u64 in its first 16 bytes).  The last page holds the console ring (``console_gfn``), the one
before the xenstore ring (``store_gfn``).  A PV guest also has a
``struct start_info`` (x86_64 layout: ``store_mfn`` at offset 56,
``console.domU.mfn`` at 72) just below them, which the restore side reads
through vCPU0's ``rdx`` as libxenguest does, and its identity p2m
(8-byte entries) in the frames below that.  HVM guests carry the two frame
numbers in ``HVM_PARAMS``.

The simulated guest and the save
--------------------------------
* ``xc_domain_save`` writes the record sequence of libxenguest 4.17: image
  and domain headers, (PV) ``X86_PV_INFO``, ``X86_CPUID_POLICY``,
  ``X86_MSR_POLICY``, ``STATIC_DATA_END``, (PV) ``X86_PV_P2M_FRAMES``,
  ``PAGE_DATA`` batches of at most 1024 pages, then ``X86_TSC_INFO`` and
  (PV) ``SHARED_INFO`` and per vCPU ``X86_PV_VCPU_BASIC``/``EXTENDED``/
  ``XSAVE``, or (HVM) ``HVM_CONTEXT`` and ``HVM_PARAMS``; then ``END``, or
  for Remus/COLO a ``CHECKPOINT`` record per checkpoint (and no ``END``:
  libxenguest ends a checkpointed stream when the toolstack stops it).
* HVM saves call ``switch_qemu_logdirty(domid, 1)`` at setup and ``(domid,
  0)`` at cleanup, live or not, as libxenguest does.
* Live saves turn log-dirty on and iterate.  While the guest runs (during
  each precopy round, and between Remus/COLO checkpoints) it dirties
  ``dirty_pages`` pages chosen from ``seed``.  The installed
  ``precopy_policy`` decides when to stop, else libxenguest's policy (stop
  after 5 iterations or with fewer than 50 dirty pages).
* A nonzero ``suspend`` reply suspends the domain (``state=suspended``)
  unless its meta says ``ignore_suspend=1``, in which case the save fails
  with "Domain has not been suspended"; a zero reply fails the save.  A
  positive ``postcopy`` reply resumes it (``state=running``).
* On failure the rig turns log-dirty off (as libxenguest) and resumes a
  domain it suspended (``state=running``): it stands in for the toolstack's
  resume that ``xl`` performs after a failed save.

Restores fill the target so that its memory is byte-identical to the
source's at the final round (the rig does not rewrite start_info, the p2m or
the store page, which real Xen does), set ``kind``, ``vcpus``,
``nr_pages``, the frame numbers, the event channels and domids it was
given, and leave the domain ``paused``.  An empty target adopts the
stream's type; a target with a kind rejects a stream of the other kind.

errno values the rig sets where libxenguest leaves errno unspecified:
``EINVAL`` for malformed stream content and for callbacks that report
failure, ``EIO`` for an unexpected end of stream (libxc says 0),
``ESRCH`` for a missing domain, ``EBUSY`` for a domain already being saved
or restored, ``ECANCELED`` for a precopy policy abort.

Fault injection (``XENSR_SIM_FAULT``)
-------------------------------------
A comma-separated list of ``NAME[:ARG...][@save|@restore]``.  The ``@``
suffix limits a fault to saves or to restores; without it the fault applies
to both.  ``ERRNO`` is a number or a name (``EIO``); ``SIGNAME`` a number or
a name with or without ``SIG`` (``SEGV``, ``ABRT``, ``BUS``, ``KILL``...).

``open-fail[:ERRNO]``
    ``xc_interface_open`` logs "Could not obtain handle on privileged
    command interface" (context ``xencall``, level ERROR, errno ERRNO) and
    returns NULL with errno ERRNO (default ``ENOENT``, as on a host without
    Xen).  No ``@`` suffix.
``fail-at-page:N[:ERRNO]``
    Once N pages have been processed (written to the stream by a save,
    copied into the domain by a restore, counted over all rounds) the
    operation fails: an ERROR log in libxc's style ("Failed to map guest
    pages (5 = Input/output error): Internal error" for a save, "Unable to
    map ... mfns for ... pages of data" for a restore), the usual unwinding
    ("Save failed"/"Restore failed"), return -1 with errno ERRNO (default
    ``EIO``).  A failed save's stream holds exactly N pages.
``signal-at-page:N:SIGNAME``
    At the same point, ``raise(SIGNAME)``: the helper dies of that signal.
``hang-at:POINT``
    Block forever in ``pause()`` (handled signals such as the helper's
    SIGTERM do not end it; SIGKILL does).  POINT is ``suspend``,
    ``postcopy``, ``checkpoint``, ``wait_checkpoint``,
    ``switch_qemu_logdirty``, ``static_data_done``, ``precopy_policy`` or
    ``restore_results`` -- just before the rig calls that installed
    callback -- or ``page:N``, at the page-count point above.
``stall:MS``
    Sleep MS milliseconds before each ``PAGE_DATA`` batch written or read.
``log-flood:N[:LEN]``
    At the start of ``xc_domain_save``/``xc_domain_restore`` emit N log
    lines (level DEBUG, context ``xc``) of exactly LEN bytes (default 80;
    LEN may exceed 64 KiB, which Debian's helper cannot frame: it aborts).
``truncate-stream:BYTES``
    A save writes only the first BYTES bytes of its stream, drops the rest
    while reporting it written, and returns success: a lying sender.
``garbage-control:BYTES``
    At the start of the operation write BYTES bytes of deterministic garbage
    (xorshift64* seeded with 0x5eed, top byte of each output) to fd 1, the
    helper's control pipe.
``exit-early``
    ``_exit(0)`` at the start of ``xc_domain_save``/``xc_domain_restore``
    (after log-flood and garbage-control): the helper never sends
    ``complete``.

A malformed spec makes ``xc_interface_open`` fail with ``EINVAL`` after an
ERROR log naming the bad item; :func:`parse_fault_spec` applies the same
grammar in Python.
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
from typing import Dict, Iterator, List, Optional, Tuple, Union

__all__ = [
    "SimulatedHost",
    "simulated_host",
    "rig_dir",
    "rig_available",
    "parse_fault_spec",
    "PAGE_SIZE",
]

PAGE_SIZE = 4096
_PAGES_PER_MIB = (1 << 20) // PAGE_SIZE
_DOMID_FIRST_RESERVED = 0x7ff0       # xen/include/public/xen.h
_DEFAULT_MAX_MIB = 16 * 1024          # restore targets: 16 GiB
_RIG_LIBS = ("libxenctrl.so.4.17", "libxenguest.so.4.17")
_START_INFO_MAGIC = b"xen-3.0-x86_64"

_HANG_POINTS = (
    "suspend", "postcopy", "checkpoint", "wait_checkpoint",
    "switch_qemu_logdirty", "static_data_done", "precopy_policy",
    "restore_results",
)
_STATES = ("running", "paused", "suspended", "shutdown")


def rig_dir() -> Path:
    """Directory holding the rig's libraries (``xensr/_rig``)."""
    return Path(__file__).resolve().parent / "_rig"


def rig_available() -> bool:
    """True when both rig libraries have been built."""
    d = rig_dir()
    return all((d / name).is_file() for name in _RIG_LIBS)


# --------------------------------------------------------------------------
# Fault specifications

def _parse_uint(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{what}: expected a decimal number, got {text!r}")
    return int(text)


def _parse_errno(text: str) -> int:
    if text.isdigit():
        value = int(text)
        if not 0 < value <= 4095:
            raise ValueError(f"errno out of range: {text}")
        return value
    value = getattr(_errno, text, None)
    if not text.startswith("E") or not isinstance(value, int):
        raise ValueError(f"unknown errno name {text!r}")
    return value


def _parse_signal(text: str) -> int:
    if text.isdigit():
        value = int(text)
        if not 0 < value < _signal.NSIG:
            raise ValueError(f"signal out of range: {text}")
        return value
    name = text if text.startswith("SIG") else "SIG" + text
    try:
        return int(_signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal name {text!r}") from None


def parse_fault_spec(spec: str) -> List[Tuple[str, Tuple[Union[int, str], ...], Optional[str]]]:
    """Parse a ``XENSR_SIM_FAULT`` value into ``(name, args, scope)`` tuples.

    Raises :class:`ValueError` naming the bad item, as the rig would refuse
    it (the rig's C parser knows a fixed table of errno names; numbers always
    work).
    """
    if not isinstance(spec, str):
        raise TypeError(f"fault spec must be a str, not {type(spec).__name__}")
    out = []
    for item in spec.split(","):
        if not item:
            continue
        body, scope = item, None
        if "@" in item:
            body, scope = item.rsplit("@", 1)
            if scope not in ("save", "restore"):
                raise ValueError(f"bad fault {item!r}: scope must be @save or @restore")
        name, *args = body.split(":")
        try:
            parsed = _parse_fault(name, args, scope)
        except ValueError as exc:
            raise ValueError(f"bad fault {item!r}: {exc}") from None
        out.append((name, parsed, scope))
    if len(out) > 16:
        raise ValueError("more than 16 faults")
    return out


def _parse_fault(name: str, args: List[str], scope: Optional[str]) -> Tuple:
    n = len(args)
    if name == "open-fail":
        if scope is not None or n > 1:
            raise ValueError("takes [:ERRNO] and no @scope")
        return (_parse_errno(args[0]),) if n else (_errno.ENOENT,)
    if name == "fail-at-page":
        if n not in (1, 2):
            raise ValueError("takes :N[:ERRNO]")
        return (_parse_uint(args[0], "N"),
                _parse_errno(args[1]) if n == 2 else _errno.EIO)
    if name == "signal-at-page":
        if n != 2:
            raise ValueError("takes :N:SIGNAME")
        return (_parse_uint(args[0], "N"), _parse_signal(args[1]))
    if name == "hang-at":
        if n == 2 and args[0] == "page":
            return ("page", _parse_uint(args[1], "N"))
        if n == 1 and args[0] in _HANG_POINTS:
            return (args[0],)
        raise ValueError(f"POINT must be page:N or one of {', '.join(_HANG_POINTS)}")
    if name == "stall":
        if n != 1:
            raise ValueError("takes :MS")
        return (_parse_uint(args[0], "MS"),)
    if name == "log-flood":
        if n not in (1, 2):
            raise ValueError("takes :N[:LEN]")
        length = _parse_uint(args[1], "LEN") if n == 2 else 80
        if not 0 < length <= 64 << 20:
            raise ValueError("LEN must be 1..64 MiB")
        return (_parse_uint(args[0], "N"), length)
    if name == "truncate-stream":
        if n != 1 or scope == "restore":
            raise ValueError("takes :BYTES and applies to saves only")
        return (_parse_uint(args[0], "BYTES"),)
    if name == "garbage-control":
        if n != 1:
            raise ValueError("takes :BYTES")
        return (_parse_uint(args[0], "BYTES"),)
    if name == "exit-early":
        if n:
            raise ValueError("takes no argument")
        return ()
    raise ValueError(f"unknown fault {name!r}")


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
    def __init__(self, domdir: Path, exclusive: bool):
        self.path = domdir / "lock"
        self.how = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, self.how)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = -1


# --------------------------------------------------------------------------
# The host

class SimulatedHost:
    """A simulated Xen host: a state directory the rig's libraries work on.

    ``state_dir`` defaults to a new temporary directory, removed by
    :meth:`close` (or on leaving the ``with`` block) unless ``keep=True``.
    An existing directory passed in is used as is and never removed.
    """

    def __init__(self, state_dir: Union[str, os.PathLike, None] = None, *,
                 faults: Optional[str] = None, keep: bool = False):
        if state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="xensr-sim-"))
            self._owned = not keep
        else:
            self._state_dir = Path(state_dir)
            self._state_dir.mkdir(parents=True, exist_ok=True)
            self._owned = False
        self._faults: List[str] = []
        self._created = 0
        self._last_domid = 0            # the domid _install allocated last
        self._closed = False
        if faults:
            self.set_fault(faults)

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> "SimulatedHost":
        return self

    def __exit__(self, *exc) -> None:
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
    def rig_dir(self) -> Path:
        """Directory of the rig libraries (``xensr/_rig``)."""
        return rig_dir()

    @property
    def env_vars(self) -> Dict[str, str]:
        """Only the variables the rig needs (merged into :attr:`env`)."""
        old = os.environ.get("LD_LIBRARY_PATH", "")
        ld = str(self.rig_dir) + (":" + old if old else "")
        out = {"LD_LIBRARY_PATH": ld, "XENSR_SIM_DIR": str(self._state_dir)}
        if self._faults:
            out["XENSR_SIM_FAULT"] = self.fault_spec
        return out

    @property
    def env(self) -> Dict[str, str]:
        """The environment for a helper: ``os.environ`` plus the rig's
        ``LD_LIBRARY_PATH`` (rig first), ``XENSR_SIM_DIR`` and, when faults
        are set, ``XENSR_SIM_FAULT`` (an inherited one is dropped)."""
        env = dict(os.environ)
        env.pop("XENSR_SIM_FAULT", None)
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
                      ignore_suspend: bool = False) -> int:
        """Create a running guest of ``memory_mib`` MiB and return its domid.

        ``dirty_pages`` pages are dirtied per round while it runs during a
        live save; ``seed`` seeds both its initial memory and that workload
        (default: distinct per domain of this host, deterministic).
        """
        memory_mib = _check_int("memory_mib", memory_mib, 1, 1 << 20)
        vcpus = _check_int("vcpus", vcpus, 1, 128)
        dirty_pages = _check_int("dirty_pages", dirty_pages, 0, 1 << 30)
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
        vcpus = 0 if vcpus is None else _check_int("vcpus", vcpus, 1, 128)
        max_mib = _check_int("max_mib", max_mib, 1, 1 << 20)
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
        self.update_domain(domid, state="paused")

    def unpause(self, domid: int) -> None:
        self.update_domain(domid, state="running")

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


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def _fill_memory(f, nr_pages: int, seed: int) -> None:
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


def _make_fixture():
    import pytest

    @pytest.fixture
    def simulated_host(tmp_path) -> Iterator[SimulatedHost]:
        """A :class:`SimulatedHost` in the test's ``tmp_path``."""
        with SimulatedHost(tmp_path / "simxen") as host:
            yield host

    return simulated_host


def __getattr__(name: str):
    # The pytest fixture is built on first use, so that importing
    # xensr.testing does not import pytest.
    if name == "simulated_host":
        fixture = _make_fixture()
        globals()["simulated_host"] = fixture
        return fixture
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
