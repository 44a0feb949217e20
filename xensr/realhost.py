"""The real Xen host around the helper: what a sender needs, and nothing
that only libxl can do.

:class:`XenHost` implements, for a real Xen host (dom0), the host
operations a save or a migration needs around xensr's helper:

* looking domains up and reading their libxl configuration, renaming,
  destroying, pausing and unpausing them: ``xl`` (``domid``, ``domname``,
  ``list -l``, ``rename``, ``destroy``, ``pause``, ``unpause``);
* suspending a guest (the helper's ``suspend`` callback): xenstore
  ``/local/domain/DOMID/control/shutdown`` = ``suspend``, then waiting until
  the hypervisor reports the domain shut down for suspend;
* resuming it after a failure past the suspend: a suspend-cancel resume,
  libxenctrl's ``xc_domain_resume(xch, domid, fast=1)``, after which the
  guest runs on where it stopped.

xenstore and libxenctrl are reached through Debian's own Python bindings,
``xen.lowlevel.xs`` and ``xen.lowlevel.xc`` (in ``xen-utils-4.X``, under
``/usr/lib/xen-4.X/lib/python``, built for the system Python): they are
imported from there for the running hypervisor's release.  Where they
cannot be imported (a Python other than the one they are built for), the
same calls go to ``libxenctrl.so.4.X`` and ``libxenstore.so.4`` through
ctypes (:class:`CtypesBindings`).

Every failure is a :class:`~xensr.errors.ToolstackError` naming the domain
and the operation: :class:`~xensr.errors.DomainNotFound` when the domain
does not exist, :class:`~xensr.errors.SuspendTimeout` when the guest does
not suspend in time.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, List, Optional, Sequence

from ._xenlibs import XEN_VERSION
from .errors import DomainNotFound, SuspendTimeout, ToolstackError

__all__ = ["XenHost", "DomainInfo", "LowLevelBindings", "CtypesBindings",
           "hypervisor_release", "SHUTDOWN_SUSPEND"]

#: Xen's shutdown reasons (``SHUTDOWN_*`` of public/sched.h).
SHUTDOWN_POWEROFF = 0
SHUTDOWN_REBOOT = 1
SHUTDOWN_SUSPEND = 2
SHUTDOWN_CRASH = 3
SHUTDOWN_WATCHDOG = 4
_SHUTDOWN_NAMES = {SHUTDOWN_POWEROFF: "poweroff", SHUTDOWN_REBOOT: "reboot",
                   SHUTDOWN_SUSPEND: "suspend", SHUTDOWN_CRASH: "crash",
                   SHUTDOWN_WATCHDOG: "watchdog"}

# XEN_DOMINF_* flags of xc_domaininfo_t (public/domctl.h; the same 4.17 to 4.21).
_DOMINF_DYING = 0x1
_DOMINF_SHUTDOWN = 0x4
_DOMINF_PAUSED = 0x8
_DOMINF_SHUTDOWN_SHIFT = 16
_DOMINF_SHUTDOWN_MASK = 0xFF

#: Seconds an ``xl`` command may take before it is an error.
XL_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    """What the hypervisor says about a domain."""

    domid: int
    dying: bool
    shutdown: bool
    shutdown_reason: int
    paused: bool

    @property
    def state(self) -> str:
        """``running``, ``paused``, ``dying`` or ``shutdown(REASON)``."""
        if self.dying:
            return "dying"
        if self.shutdown:
            return f"shutdown({_SHUTDOWN_NAMES.get(self.shutdown_reason, self.shutdown_reason)})"
        return "paused" if self.paused else "running"

    @property
    def suspended(self) -> bool:
        return self.shutdown and self.shutdown_reason == SHUTDOWN_SUSPEND


def hypervisor_release(sysfs: str = "/sys/hypervisor/version") -> Optional[str]:
    """The running hypervisor's release ("4.20"), from sysfs; None when this
    is not a Xen domain with that information."""
    try:
        with open(os.path.join(sysfs, "major")) as f:
            major = f.read().strip()
        with open(os.path.join(sysfs, "minor")) as f:
            minor = f.read().strip()
    except OSError:
        return None
    return f"{major}.{minor}" if major.isdigit() and minor.isdigit() else None


class LowLevelBindings:
    """Debian's ``xen.lowlevel.xc`` and ``xen.lowlevel.xs`` (or objects with
    their methods, for tests): ``xc.domain_getinfo``, ``xc.domain_resume``,
    ``xs.read``, ``xs.write``."""

    name = "xen.lowlevel"

    def __init__(self, xc: Any, xs: Any, xc_error: Any = Exception) -> None:
        self.xc = xc
        self.xs = xs
        self.xc_error = xc_error

    @classmethod
    def load(cls, release: str, prefix: str = "/usr/lib") -> "LowLevelBindings":
        """Import Debian's bindings of ``release`` from
        ``PREFIX/xen-RELEASE/lib/python`` and open their handles
        (ImportError if they are not installed or not built for this
        Python; their own error if a handle does not open)."""
        where = f"{prefix}/xen-{release}/lib/python"
        if os.path.isdir(where) and where not in sys.path:
            sys.path.append(where)
        xc_mod = importlib.import_module("xen.lowlevel.xc")
        xs_mod = importlib.import_module("xen.lowlevel.xs")
        return cls(xc_mod.xc(), xs_mod.xs(), getattr(xc_mod, "Error", Exception))

    def info(self, domid: int) -> Optional[DomainInfo]:
        found = self.xc.domain_getinfo(domid, 1)
        if not found or int(found[0]["domid"]) != domid:
            return None
        d = found[0]
        return DomainInfo(domid, bool(d["dying"]), bool(d["shutdown"]),
                          int(d["shutdown_reason"]), bool(d["paused"]))

    def resume(self, domid: int, fast: bool) -> None:
        self.xc.domain_resume(domid, 1 if fast else 0)

    def xs_read(self, path: str) -> Optional[bytes]:
        value = self.xs.read("", path)
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    def xs_write(self, path: str, value: bytes) -> None:
        self.xs.write("", path, value)

    def close(self) -> None:
        for h in (self.xs, self.xc):
            close = getattr(h, "close", None)
            if callable(close):
                close()


class CtypesBindings:
    """The same calls through ctypes: ``xc_domain_getinfolist`` of
    ``libxenctrl.so.RELEASE``, ``xc_domain_resume`` of
    ``libxenguest.so.RELEASE``, ``xs_read`` and ``xs_write`` of
    ``libxenstore.so.4``."""

    name = "ctypes"

    # xc_domaininfo_t: domid (u16) at 0, flags (u32) at 4; the whole struct
    # is about 130 bytes (4.17 to 4.21): room to spare.
    _INFO_SIZE = 1024

    def __init__(self, release: str) -> None:
        try:
            self.ctrl = ctypes.CDLL(f"libxenctrl.so.{release}", use_errno=True)
            self.guest = ctypes.CDLL(f"libxenguest.so.{release}", use_errno=True)
            self.store = ctypes.CDLL("libxenstore.so.4", use_errno=True)
            self.libc = ctypes.CDLL(None)
            self._declare()
        except (OSError, AttributeError) as exc:
            raise ImportError(f"cannot load Xen {release}'s libraries: {exc}") from None
        self.xch = self.ctrl.xc_interface_open(None, None, 0)
        if not self.xch:
            err = ctypes.get_errno()
            raise ImportError(f"xc_interface_open: {os.strerror(err)}")
        self.xsh = self.store.xs_open(0)
        if not self.xsh:
            err = ctypes.get_errno()
            self.ctrl.xc_interface_close(self.xch)
            raise ImportError(f"xs_open: {os.strerror(err)}")
        self.buf = ctypes.create_string_buffer(self._INFO_SIZE)

    def _declare(self) -> None:
        c = self.ctrl
        c.xc_interface_open.restype = ctypes.c_void_p
        c.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        c.xc_interface_close.argtypes = [ctypes.c_void_p]
        c.xc_domain_getinfolist.restype = ctypes.c_int
        c.xc_domain_getinfolist.argtypes = [ctypes.c_void_p, ctypes.c_uint32,
                                            ctypes.c_uint, ctypes.c_void_p]
        g = self.guest
        g.xc_domain_resume.restype = ctypes.c_int
        g.xc_domain_resume.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int]
        s = self.store
        s.xs_open.restype = ctypes.c_void_p
        s.xs_open.argtypes = [ctypes.c_ulong]
        s.xs_close.argtypes = [ctypes.c_void_p]
        s.xs_read.restype = ctypes.c_void_p
        s.xs_read.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p,
                              ctypes.POINTER(ctypes.c_uint)]
        s.xs_write.restype = ctypes.c_bool
        s.xs_write.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p,
                               ctypes.c_char_p, ctypes.c_uint]
        self.libc.free.argtypes = [ctypes.c_void_p]

    def info(self, domid: int) -> Optional[DomainInfo]:
        n = self.ctrl.xc_domain_getinfolist(self.xch, domid, 1, self.buf)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"xc_domain_getinfolist: {os.strerror(err)}")
        raw = self.buf.raw
        if n < 1 or int.from_bytes(raw[0:2], "little") != domid:
            return None
        flags = int.from_bytes(raw[4:8], "little")
        return DomainInfo(domid, bool(flags & _DOMINF_DYING), bool(flags & _DOMINF_SHUTDOWN),
                          (flags >> _DOMINF_SHUTDOWN_SHIFT) & _DOMINF_SHUTDOWN_MASK,
                          bool(flags & _DOMINF_PAUSED))

    def resume(self, domid: int, fast: bool) -> None:
        if self.guest.xc_domain_resume(self.xch, domid, 1 if fast else 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"xc_domain_resume: {os.strerror(err)}")

    def xs_read(self, path: str) -> Optional[bytes]:
        length = ctypes.c_uint(0)
        p = self.store.xs_read(self.xsh, 0, path.encode(), ctypes.byref(length))
        if not p:
            return None
        try:
            return ctypes.string_at(p, length.value)
        finally:
            self.libc.free(p)

    def xs_write(self, path: str, value: bytes) -> None:
        if not self.store.xs_write(self.xsh, 0, path.encode(), value, len(value)):
            err = ctypes.get_errno()
            raise OSError(err, f"xs_write {path}: {os.strerror(err)}")

    def close(self) -> None:
        if self.xsh:
            self.store.xs_close(self.xsh)
            self.xsh = None
        if self.xch:
            self.ctrl.xc_interface_close(self.xch)
            self.xch = None


Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str], timeout: float) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)


class XenHost:
    """A real Xen host, seen from dom0 (the sender's side of a save or a
    migration).

    ``xl``: the xl program (default ``xl`` from ``PATH``; Debian's
    ``/usr/sbin/xl`` picks the running hypervisor's).  ``bindings``:
    ``"lowlevel"`` (Debian's Python bindings), ``"ctypes"``, an object with
    their methods (tests), or None: Debian's bindings where they import,
    ctypes otherwise.  ``release``: the Xen release whose bindings and
    libraries to use (default: the running hypervisor's, else the one xensr
    is built for).  The bindings are opened on first use.
    """

    def __init__(self, *, xl: str = "xl", bindings: Any = None,
                 release: Optional[str] = None, run: Optional[Runner] = None,
                 xl_timeout: float = XL_TIMEOUT, poll_interval: float = 0.005) -> None:
        self.xl = xl
        self.release = release or hypervisor_release() or XEN_VERSION
        self._bindings_choice = bindings
        self._bindings: Any = None if isinstance(bindings, (str, type(None))) else bindings
        self._run = run or _run
        self.xl_timeout = xl_timeout
        self.poll_interval = poll_interval

    # ----- the bindings

    @property
    def bindings(self) -> Any:
        """The xenstore/libxenctrl bindings in use (opened on first use)."""
        if self._bindings is None:
            self._bindings = self._open_bindings(self._bindings_choice)
        return self._bindings

    def _open_bindings(self, choice: Optional[str]) -> Any:
        if not self.release:
            raise ToolstackError("the Xen release is unknown (no /sys/hypervisor/version "
                                 "and xensr is not built): pass release=")
        errors: List[str] = []
        if choice in (None, "lowlevel"):
            try:
                return LowLevelBindings.load(self.release)
            except Exception as exc:  # ImportError, or the handle did not open
                errors.append(f"xen.lowlevel: {type(exc).__name__}: {exc}")
        if choice in (None, "ctypes"):
            try:
                return CtypesBindings(self.release)
            except ImportError as exc:
                errors.append(f"ctypes: {exc}")
        if not errors:
            raise ToolstackError(f"unknown bindings {choice!r}: 'lowlevel', 'ctypes' or None")
        raise ToolstackError(f"cannot reach Xen {self.release}'s xenstore and libxenctrl: "
                             + "; ".join(errors))

    def close(self) -> None:
        """Close the bindings' handles (they reopen on next use)."""
        if self._bindings is not None and isinstance(self._bindings_choice, (str, type(None))):
            self._bindings.close()
            self._bindings = None

    def __enter__(self) -> "XenHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- xl

    def _xl(self, what: str, args: Sequence[str], domid: Optional[int] = None) -> str:
        argv = [self.xl, *args]
        try:
            r = self._run(argv, self.xl_timeout)
        except FileNotFoundError:
            raise ToolstackError(f"{what}: {self.xl} not found", domid) from None
        except subprocess.TimeoutExpired:
            raise ToolstackError(f"{what}: `{' '.join(argv)}` did not end within "
                                 f"{self.xl_timeout:.0f} s", domid) from None
        except OSError as exc:
            raise ToolstackError(f"{what}: cannot run {self.xl}: {exc}", domid) from None
        if r.returncode != 0:
            said = " | ".join(ln.strip() for ln in (r.stderr or r.stdout or "").splitlines()
                              if ln.strip())[-400:]
            cls = DomainNotFound if _says_not_found(said) else ToolstackError
            raise cls(f"{what}: `{' '.join(argv)}` exited with status {r.returncode}"
                      + (f": {said}" if said else ""), domid)
        return r.stdout

    def lookup(self, name: str) -> int:
        """The domid of the domain named ``name``; DomainNotFound if none."""
        out = self._xl(f"looking up domain {name!r}", ["domid", name])
        try:
            return int(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ToolstackError(f"xl domid {name}: not a domid: {out.strip()[:100]!r}") from None

    def domain_name(self, domid: int) -> str:
        out = self._xl(f"domain {domid}'s name", ["domname", str(domid)], domid)
        name = out.strip()
        if not name:
            raise DomainNotFound(f"domain {domid} has no name (xl domname printed nothing)",
                                 domid)
        return name

    def domain_config(self, domid: int) -> bytes:
        """The domain's libxl configuration (JSON, UTF-8), as ``xl list -l
        DOMID`` prints it under ``config``: what ``xl save`` and ``xl
        migrate`` send."""
        return json.dumps(self._config(domid), indent=4).encode() + b"\n"

    def _config(self, domid: int) -> Any:
        out = self._xl(f"domain {domid}'s configuration", ["list", "-l", str(domid)], domid)
        return parse_list_long(out, domid)

    def domain_type(self, domid: int) -> str:
        """``pv``, ``pvh`` or ``hvm``, from the domain's libxl configuration."""
        config = self._config(domid)
        kind = (config.get("c_info") or {}).get("type") if isinstance(config, dict) else None
        if kind not in ("pv", "pvh", "hvm"):
            raise ToolstackError(f"domain {domid}'s configuration names no type pv, pvh or "
                                 f"hvm (c_info.type is {kind!r})", domid)
        return str(kind)

    def rename(self, domid: int, name: str) -> None:
        self._xl(f"renaming domain {domid} to {name!r}", ["rename", str(domid), name], domid)

    def destroy(self, domid: int) -> None:
        self._xl(f"destroying domain {domid}", ["destroy", str(domid)], domid)

    def pause(self, domid: int) -> None:
        self._xl(f"pausing domain {domid}", ["pause", str(domid)], domid)

    def unpause(self, domid: int) -> None:
        self._xl(f"unpausing domain {domid}", ["unpause", str(domid)], domid)

    # ----- the hypervisor and xenstore

    def info(self, domid: int) -> DomainInfo:
        """What the hypervisor says about ``domid``; DomainNotFound if it
        does not exist."""
        try:
            found: Optional[DomainInfo] = self.bindings.info(domid)
        except ToolstackError:
            raise
        except Exception as exc:
            raise ToolstackError(f"domain {domid}'s state: {type(exc).__name__}: {exc}",
                                 domid) from None
        if found is None:
            raise DomainNotFound(f"no domain {domid}", domid)
        return found

    def suspend(self, domid: int, timeout: float = 60.0) -> None:
        """Ask the guest to suspend and wait until the hypervisor reports it
        shut down for suspend (usable as the helper's ``suspend``
        callback).

        The request is xenstore ``control/shutdown`` = ``suspend``; the guest
        acknowledges it by clearing the node, then suspends.  SuspendTimeout
        when it has not suspended after ``timeout`` seconds: a request the
        guest never acknowledged is withdrawn, and the guest was never
        suspended, so it must not be resumed.  A guest that shuts down for
        another reason, or disappears, is a ToolstackError (DomainNotFound).
        """
        node = f"/local/domain/{domid}/control/shutdown"
        first = self.info(domid)
        if first.suspended:
            return
        if first.shutdown or first.dying:
            raise ToolstackError(f"domain {domid} cannot suspend: it is {first.state}", domid)
        self._xs_write(node, b"suspend", domid)
        deadline = time.monotonic() + timeout
        acknowledged = False
        interval = self.poll_interval
        while True:
            info = self.info(domid)
            if info.suspended:
                return
            if info.shutdown or info.dying:
                raise ToolstackError(f"domain {domid} was asked to suspend and is "
                                     f"{info.state} instead", domid)
            if not acknowledged:
                acknowledged = self._xs_read(node, domid) != b"suspend"
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
            interval = min(interval * 2, 0.05)
        if not acknowledged and self._xs_read(node, domid) == b"suspend":
            self._xs_write(node, b"", domid)
            raise SuspendTimeout(f"domain {domid} did not acknowledge the suspend request "
                                 f"within {timeout:g} s; the request is withdrawn", domid)
        raise SuspendTimeout(f"domain {domid} acknowledged the suspend request but did not "
                             f"suspend within {timeout:g} s", domid)

    def resume(self, domid: int) -> None:
        """Resume a domain suspended for a save that failed: a suspend-cancel
        resume (``xc_domain_resume`` with fast=1), the guest running on where
        it stopped.  ToolstackError if the domain is not suspended."""
        info = self.info(domid)
        if not info.suspended:
            raise ToolstackError(f"domain {domid} is {info.state}, not suspended: nothing "
                                 "to resume", domid)
        try:
            self.bindings.resume(domid, True)
        except ToolstackError:
            raise
        except Exception as exc:
            raise ToolstackError(f"resuming domain {domid}: {type(exc).__name__}: {exc}",
                                 domid) from None

    def _xs_read(self, path: str, domid: int) -> Optional[bytes]:
        try:
            value = self.bindings.xs_read(path)
        except ToolstackError:
            raise
        except Exception as exc:
            raise ToolstackError(f"xenstore read {path}: {type(exc).__name__}: {exc}",
                                 domid) from None
        return None if value is None else bytes(value)

    def _xs_write(self, path: str, value: bytes, domid: int) -> None:
        try:
            self.bindings.xs_write(path, value)
        except ToolstackError:
            raise
        except Exception as exc:
            raise ToolstackError(f"xenstore write {path}: {type(exc).__name__}: {exc}",
                                 domid) from None


def _says_not_found(text: str) -> bool:
    """Whether xl's message says the domain does not exist."""
    low = text.lower()
    return any(s in low for s in ("invalid domain identifier", "not found",
                                  "can't get domid", "is an invalid domain identifier",
                                  "no such domain"))


def parse_list_long(text: str, domid: int) -> Any:
    """The ``config`` object of ``xl list -l DOMID``'s JSON (a list of
    ``{"domid": N, "config": {...}}``)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ToolstackError(f"xl list -l {domid}: not JSON ({exc}): {text[:200]!r}",
                             domid) from None
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise ToolstackError(f"xl list -l {domid}: a JSON {type(doc).__name__}, not a list",
                             domid)
    for entry in doc:
        if isinstance(entry, dict) and entry.get("domid") == domid and "config" in entry:
            return entry["config"]
    raise DomainNotFound(f"xl list -l {domid}: no configuration of domain {domid} in its "
                         "output", domid)
