"""The host operations a migration needs around the helper.

A migration asks its host for a domain's name and libxl configuration, to
suspend and resume it, to rename, pause, unpause and destroy it; the
receiving side also to create the domain the stream is restored into.
:class:`Toolstack` names these methods; :class:`xensr.testing.SimulatedHost`
implements all of them, ``xensr.realhost.XenHost`` the sender's on a real
Xen host.  Each failure is a :class:`~xensr.errors.ToolstackError`
(:class:`~xensr.errors.DomainNotFound` for a domain that does not exist,
:class:`~xensr.errors.SuspendTimeout` for a guest that never acknowledged
a suspend request, which must then not be resumed).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from typing import Protocol, runtime_checkable

from .errors import DomainNotFound, SuspendTimeout, ToolstackError

__all__ = [
    "Toolstack", "IncomingToolstack", "ToolstackError", "DomainNotFound",
    "SuspendTimeout", "NameInUse", "HostUnavailable", "local_host",
]


class NameInUse(ToolstackError):
    """Another domain already has the name (domain names are unique)."""


class HostUnavailable(ToolstackError):
    """No host to act on: no simulated host named and no real-host
    support installed."""


@runtime_checkable
class Toolstack(Protocol):
    """What a migration's sender needs from its host."""

    def domain_name(self, domid: int) -> str: ...

    def lookup(self, name: str) -> int:
        """The domid of the domain called ``name``; DomainNotFound if none."""
        ...

    def domain_config(self, domid: int) -> bytes:
        """The domain's libxl JSON configuration (UTF-8, no NUL)."""
        ...

    def domain_type(self, domid: int) -> str:
        """"pv", "pvh" or "hvm"."""
        ...

    def suspend(self, domid: int, timeout: float = 60.0) -> None:
        """Ask the guest to suspend and wait until it has; SuspendTimeout
        if it never acknowledges (then it must not be resumed)."""
        ...

    def resume(self, domid: int) -> None:
        """Suspend-cancel resume: the guest runs again where it stopped."""
        ...

    def rename(self, domid: int, name: str) -> None: ...

    def destroy(self, domid: int) -> None: ...

    def pause(self, domid: int) -> None: ...

    def unpause(self, domid: int) -> None: ...


@runtime_checkable
class IncomingToolstack(Toolstack, Protocol):
    """What a receiver needs on top: making the domain to restore into."""

    def create_incoming(self, config: bytes, name: str) -> int:
        """A new paused, empty domain built from the libxl JSON ``config``
        (type, memory, vCPUs), named ``name``; its domid."""
        ...

    def restore_parameters(self, domid: int) -> Dict[str, Any]:
        """The restore helper's parameters: ``store_evtchn``,
        ``console_evtchn``, ``store_domid``, ``console_domid``, ``type``."""
        ...

    def restored(self, domid: int, store_gfn: int, console_gfn: int) -> None:
        """The helper restored the domain (its ring frames)."""
        ...


def local_host(state_dir: Optional[str] = None) -> Toolstack:
    """The host the command line acts on: the simulated host whose state
    directory is ``state_dir`` or ``$XENSR_SIMHOST_DIR`` (with the faults of
    ``$XENSR_SIMHOST_FAULT``), else the real
    Xen host (``xensr.realhost.XenHost``); HostUnavailable when neither
    is there."""
    import os

    state_dir = state_dir or os.environ.get("XENSR_SIMHOST_DIR") or None
    if state_dir:
        from .testing import SimulatedHost

        if not os.path.isdir(state_dir):
            raise HostUnavailable(f"simulated host directory {state_dir} does not exist")
        # Its faults and auto suspension as the environment names them.
        try:
            return SimulatedHost(
                state_dir, faults=os.environ.get("XENSR_SIMHOST_FAULT") or None,
                auto_suspend=os.environ.get("XENSR_SIMHOST_AUTO_SUSPEND") == "1")
        except ValueError as e:
            raise HostUnavailable(f"XENSR_SIMHOST_FAULT: {e}") from e
    try:
        from . import realhost
    except ImportError as e:
        raise HostUnavailable(
            "no real-host support in this xensr (xensr.realhost is missing) and "
            "XENSR_SIMHOST_DIR is not set") from e
    try:
        host: Toolstack = realhost.XenHost()
    except ImportError as e:       # the Xen bindings it uses
        raise HostUnavailable(f"the real Xen host cannot be used here: {e}") from e
    return host
