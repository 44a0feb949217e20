"""The sending side of a migration: ``xl migrate``'s bytes and semantics.

    result = migrate_domain(host, domid, transport)          # blocking
    result = await xensr.migrate.aio_migrate_domain(...)      # asyncio
    ex = MigrationSender(host, domid, send_fd, recv_fd)       # any loop
    ex.start(); ... ex.fds() / ex.handle() ...; ex.result()

The source guest is safe on every failure (MigrationError.source says
what became of it): before the receiver's "ready" it keeps running, or is
resumed with suspend-cancel after its suspend (not when it never
acknowledged the suspend); after GO, xl's rules: the receiver's GO back
after a failed start resumes it, anything else leaves both ends as they
are (HandshakeUndefined).

The ``policy`` option (a :class:`xensr.policy.DowntimePolicy`) decides
when the save stops the guest, as for any live save; the result's
``save.precopy`` (:class:`xensr.policy.PrecopyReport`) has the rounds,
the policy's decisions and the pages sent after the suspend, and
:attr:`MigrationResult.suspended` the whole downtime as this side
measures it (see there).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple, Union

from ..api import HelperOptions, SaveOperation, SaveResult
from ..callbacks import SAVE_CALLBACKS, PrecopyDecision, find
from ..errors import SuspendTimeout, ToolstackError, XensrError
from ..policy import DowntimePolicy, Round, RoundRecorder
from ..toolstack import Toolstack
from ..xlfile import _WrappedCallbacks, preamble_bytes, trailer_bytes
from . import wire as W
from .engine import Exchange, Read, Relay, Run, Steps, Write, run_async

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Round", "MigrationResult", "MigrateOptions", "MigrationSender", "migrate_domain",
           "aio_migrate_domain", "config_object"]

_log = logging.getLogger("xensr.migrate")


@dataclass(frozen=True)
class MigrationResult:
    """A successful migration, seen from the sender."""

    #: The source domain (destroyed now) and its name.
    domid: int
    name: str
    #: The underlying save's result; ``save.precopy`` has the rounds, the
    #: policy's decisions, the pages sent after the suspend and the time
    #: from the suspend to the end of the stream.
    save: SaveResult
    #: Seconds from the start to the receiver's report.
    elapsed: float
    #: The whole downtime as the sender measures it, in seconds: from the
    #: suspend (the helper's report that the guest is suspended, sent as
    #: soon as the suspend callback returned) to the receiver's report
    #: read here.  The receiver sends that report once its copy is
    #: renamed and unpaused (with ``-p``: left paused), so this is the
    #: stop-and-copy, the libxl trailer, ready, GO, the receiver's rename
    #: and unpause, and one trip of the report over the transport.
    suspended: float
    #: The receiver's status byte (0).
    status: int = 0
    #: Bytes sent before GO: the xl header and configuration, and the
    #: whole libxl stream with the helper's part.
    stream_bytes: int = 0

    @property
    def rounds(self) -> Tuple[Round, ...]:
        """The passes over memory, in order (``save.precopy.rounds``)."""
        return self.save.precopy.rounds

    def to_dict(self) -> Dict[str, Any]:
        """As JSON (``xensr migrate --json``): the save's precopy report
        (:meth:`xensr.policy.PrecopyReport.to_dict`), its
        ``suspended_seconds`` as ``stream_suspended_seconds`` beside this
        result's whole downtime."""
        doc: Dict[str, Any] = {"domid": self.domid, "name": self.name}
        doc.update(self.save.precopy.to_dict())
        doc["stream_suspended_seconds"] = doc.pop("suspended_seconds")
        doc.update({"stream_bytes": self.stream_bytes, "total_seconds": self.elapsed,
                    "suspended_seconds": self.suspended, "helper": self.save.helper})
        return doc


def config_object(raw: Union[bytes, str, Mapping[str, Any]]) -> Dict[str, Any]:
    """A domain's libxl configuration as a dict, from the JSON text a host
    gives (``xl list -l``'s ``[{"domid": N, "config": {...}}]`` or the
    configuration itself)."""
    if isinstance(raw, Mapping):
        obj: Any = dict(raw)
    else:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        obj = json.loads(text.rstrip("\0"))
    if isinstance(obj, list):
        if len(obj) != 1 or not isinstance(obj[0], dict):
            raise ValueError("expected the configuration of one domain")
        obj = obj[0]
    if isinstance(obj, dict) and "config" in obj and "c_info" not in obj:
        obj = obj["config"]
    if not isinstance(obj, dict):
        raise ValueError("the domain configuration is not a JSON object")
    return obj


class _Source:
    """The source guest's callbacks during the save, and what was done to it."""

    def __init__(self, host: Toolstack, domid: int, user: Optional[object],
                 suspend_timeout: float, progress_to: Any):
        self.host = host
        self.domid = domid
        self.user = user
        self.suspend_timeout = suspend_timeout
        #: time.monotonic() when the suspend callback returned.
        self.suspended_at: Optional[float] = None
        self.timed_out = False
        #: The save's rounds (SaveOperation.rounds), once it is made.
        self.recorder: Optional[RoundRecorder] = None
        self.progress_to = progress_to
        self.callbacks = _WrappedCallbacks(user, SAVE_CALLBACKS, suspend=self.suspend,
                                           progress=self.progress)

    def suspend(self) -> bool:
        fn = find(self.user, "suspend")
        try:
            if fn is not None:
                ok = bool(fn())
            else:
                self.host.suspend(self.domid, timeout=self.suspend_timeout)
                ok = True
        except SuspendTimeout:
            self.timed_out = True
            raise
        if ok:
            self.suspended_at = time.monotonic()
        return ok

    def progress(self, context: str, doing_what: str, done: int, total: int) -> Any:
        # Called by the save's RoundRecorder once it recorded the report.
        if self.progress_to is not None and self.recorder is not None:
            current = self.recorder.current()
            if current is not None:
                self.progress_to(current, done)
        fn = find(self.user, "progress")
        if fn is not None:
            return fn(context, doing_what, done, total)
        return None

    def put_back(self) -> str:
        """After a failure before GO: resume the guest if it was suspended
        (suspend-cancel); one that never acknowledged the suspend is left
        alone, as xl does.  Returns the MigrationError.source value."""
        if self.timed_out:
            return W.SOURCE_NOT_RESUMED
        if self.suspended_at is None:
            return W.SOURCE_UNTOUCHED       # libxenguest put log-dirty back off
        try:
            self.host.resume(self.domid)
        except ToolstackError as e:
            _log.error("domain %d: resuming the source failed: %s", self.domid, e)
            return W.SOURCE_UNDEFINED
        return W.SOURCE_RESUMED


def _sender_steps(host: Toolstack, domid: int, send_fd: int, recv_fd: int, *,
                  config: Optional[Mapping[str, Any]], callbacks: Optional[object],
                  debug: bool, preserve_domid: bool, suspend_timeout: float,
                  progress: Any, save_options: Dict[str, Any]) -> Steps:
    t0 = time.monotonic()
    side = "sender"
    name = host.domain_name(domid)
    try:
        cfg = dict(config) if config is not None else config_object(host.domain_config(domid))
        c_info = dict(cfg.get("c_info") or {})
        c_info["domid"] = domid if preserve_domid else 0
        c_info.setdefault("name", name)
        cfg["c_info"] = c_info
        name = c_info["name"] or name
        preamble = preamble_bytes(json.dumps(cfg, indent=4))
    except (ValueError, TypeError, AttributeError) as e:
        # As xl: no usable configuration, nothing sent, the guest untouched.
        raise W.MigrationError(f"no usable configuration for domain {domid}: {e}",
                               stage="header", side=side, source=W.SOURCE_UNTOUCHED) from e

    # banner: nothing was done to the source yet.
    try:
        banner = yield Read(recv_fd, len(W.BANNER))
    except OSError as e:
        raise W.io_error(e, "reading the banner", stage="banner", side=side,
                         source=W.SOURCE_UNTOUCHED) from e
    W.check_fixed(banner, W.BANNER, "the receiver's banner", stage="banner", side=side,
                  source=W.SOURCE_UNTOUCHED)
    try:
        yield Write(send_fd, preamble)
    except OSError as e:
        raise W.io_error(e, "writing the xl header", stage="header", side=side,
                         source=W.SOURCE_UNTOUCHED) from e

    # stream: the helper's save, live, then END.
    src = _Source(host, domid, callbacks, suspend_timeout, progress)
    op: Optional[SaveOperation] = None
    try:
        relay = Relay(send_fd)
        try:
            op = SaveOperation(domid, relay.helper_fd, src.callbacks, live=True, debug=debug,
                               **save_options)
        except BaseException:
            relay.close()
            raise
        src.recorder = op.rounds
        save = yield Run(op, relay)
        trailer = trailer_bytes()
        yield Write(send_fd, trailer)
        sent = len(preamble) + relay.total + len(trailer)
    except (XensrError, OSError) as e:
        state = src.put_back()
        if isinstance(e, OSError):
            raise W.io_error(e, "writing the end of the stream", stage="stream", side=side,
                             source=state) from e
        cause: BaseException = e
        if src.timed_out and isinstance(e.__cause__, SuspendTimeout):
            cause = e.__cause__
        why = _policy_abort(op)
        if why is not None:
            raise W.MigrationError(f"the precopy policy aborted the save ({why}): {cause}",
                                   stage="stream", side=side, source=state) from e
        raise W.MigrationError(f"the save failed: {cause}", stage="stream", side=side,
                               source=state) from e
    except BaseException:
        src.put_back()      # Ctrl-C, an abort: the guest back as it was
        raise

    # ready, then our copy renamed away and GO.
    try:
        try:
            ready = yield Read(recv_fd, len(W.READY))
        except OSError as e:
            raise W.io_error(e, "reading ready", stage="ready", side=side) from e
        W.check_fixed(ready, W.READY, "the receiver's ready", stage="ready", side=side)
        host.rename(domid, name + W.MIGRATEDAWAY_SUFFIX)
    except (W.MigrationError, ToolstackError) as e:
        state = src.put_back()
        if isinstance(e, W.MigrationError):
            e.source = state
            raise
        raise W.MigrationError(f"renaming the source failed: {e}", stage="go", side=side,
                               source=state) from e
    except BaseException:
        src.put_back()
        raise
    try:
        yield Write(send_fd, W.GO)
    except OSError as e:
        raise _undefined(e, "writing GO", "go", domid) from e

    # report and status.
    try:
        report = yield Read(recv_fd, len(W.REPORT) + 1)
    except OSError as e:
        raise _undefined(e, "reading the report", "report", domid) from e
    try:
        W.check_fixed(report[:len(W.REPORT)], W.REPORT, "the receiver's report",
                      stage="report", side=side, source=W.SOURCE_UNDEFINED)
        if len(report) <= len(W.REPORT):
            raise W.PeerClosed("the peer closed the connection before the status byte",
                               stage="report", side=side, source=W.SOURCE_UNDEFINED)
    except W.MigrationError as e:
        raise W.HandshakeUndefined(f"{_plain(e)}; domain state is now undefined, check both ends",
                                   stage="report", side=side, source=W.SOURCE_UNDEFINED) from e
    status = report[-1]
    end = time.monotonic()
    if status == W.STATUS_OK:
        try:
            host.destroy(domid)
        except ToolstackError as e:
            _log.error("domain %d: destroying the migrated source failed: %s", domid, e)
            raise W.MigrationError(f"the destination runs, but destroying the source failed: {e}",
                                   stage="report", side=side, source=W.SOURCE_UNDEFINED) from e
        downtime = save.precopy.downtime_until(end)
        if downtime is None:
            # A helper that sent no "suspended" report: the callback's time.
            downtime = end - src.suspended_at if src.suspended_at is not None else 0.0
        return MigrationResult(domid=domid, name=name, save=save, elapsed=end - t0,
                               suspended=downtime, status=status, stream_bytes=sent)

    # The target failed to start its copy: its GO back lets us resume.
    signed = status - 256 if status > 127 else status
    try:
        goback = yield Read(recv_fd, len(W.GO))
    except OSError as e:
        raise _undefined(e, "reading the GO back", "report", domid) from e
    try:
        W.check_fixed(goback, W.GO, "the receiver's GO back", stage="report", side=side)
    except W.MigrationError as e:
        raise W.HandshakeUndefined(
            f"the target reported startup failure (status code {signed}), then {_plain(e)}; "
            "domain state is now undefined, check both ends",
            stage="report", side=side, source=W.SOURCE_UNDEFINED) from e
    state = W.SOURCE_RESUMED
    try:
        host.rename(domid, name)
        host.resume(domid)
    except ToolstackError as e:
        _log.error("domain %d: putting the source back failed: %s", domid, e)
        state = W.SOURCE_UNDEFINED
    raise W.TargetFailed(f"the target reports startup failure (status code {signed}); "
                         f"the source was {'resumed' if state == W.SOURCE_RESUMED else 'not resumed'}",
                         status=status, stage="report", side=side, source=state)


def _policy_abort(op: Optional[SaveOperation]) -> Optional[str]:
    """The reason of the save's policy, when its last answer was ABORT."""
    policy = op.policy if op is not None else None
    if policy is None or not policy.decisions:
        return None
    last = policy.decisions[-1]
    return last.reason if last.decision == PrecopyDecision.ABORT else None


def _plain(e: W.MigrationError) -> str:
    text = str(e)
    prefix = f"migration {e.side}, {e.stage}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _undefined(e: OSError, what: str, stage: str, domid: int) -> W.MigrationError:
    err = W.io_error(e, what, stage=stage, side="sender")
    return W.HandshakeUndefined(
        f"{_plain(err)}: migration failed during the final handshake; domain {domid}'s "
        "state is now undefined, check both ends", stage=stage, side="sender",
        source=W.SOURCE_UNDEFINED)


class MigrateOptions(HelperOptions, total=False):
    """Options of a migration's sender (and those of the save's helper)."""

    #: The libxl configuration to send (default: the host's for the
    #: domain); its ``c_info.domid`` is set to 0, or to the domid with
    #: ``preserve_domid`` (xl's ``-D``).
    config: Optional[Mapping[str, Any]]
    preserve_domid: bool
    #: XCFLAGS_DEBUG: the helper adds a VERIFY pass the receiver checks.
    debug: bool
    #: Seconds the host waits for the guest to acknowledge the suspend.
    suspend_timeout: float
    #: When the save stops the guest (default: libxenguest's policy);
    #: xensr's helper only.
    policy: Optional[DowntimePolicy]
    #: ``progress(round, done)`` as pages of each pass go out: the
    #: :class:`xensr.policy.Round` so far (its ``pages``: the pass's
    #: count) and how many of them were sent.
    progress: Optional[Callable[[Round, int], Any]]


_SENDER_KEYS = ("config", "preserve_domid", "debug", "suspend_timeout", "progress")


class MigrationSender(Exchange):
    """One live migration of ``domid`` from ``host`` over ``send_fd`` /
    ``recv_fd`` (the same fd for a socket), driven by any loop.

    ``callbacks``: passed to the save (its ``suspend``, if any, replaces
    ``host.suspend``).  The keyword options are those of
    :class:`MigrateOptions`; the helper's go to the save.
    """

    def __init__(self, host: Toolstack, domid: int, send_fd: int, recv_fd: Optional[int] = None,
                 callbacks: Optional[object] = None, **options: Unpack[MigrateOptions]):
        if recv_fd is None:
            recv_fd = send_fd
        self.domid = domid
        o: Dict[str, Any] = dict(options)
        for key in o:
            if key not in MigrateOptions.__optional_keys__:
                raise TypeError(f"MigrationSender() got an unexpected keyword argument {key!r}")
        mine = {key: o.pop(key) for key in _SENDER_KEYS if key in o}
        steps = _sender_steps(host, domid, send_fd, recv_fd, config=mine.get("config"),
                              callbacks=callbacks, debug=bool(mine.get("debug", False)),
                              preserve_domid=bool(mine.get("preserve_domid", False)),
                              suspend_timeout=float(mine.get("suspend_timeout", 60.0)),
                              progress=mine.get("progress"), save_options=o)
        super().__init__(steps, (send_fd, recv_fd), f"migration of domain {domid}")

    def result(self) -> MigrationResult:
        r = super().result()
        assert isinstance(r, MigrationResult)
        return r


def _fds(transport: Any) -> Tuple[int, int]:
    """(send_fd, recv_fd) of a transport: an fd or socket, a (send, recv)
    pair, or an object with ``send_fd`` and ``recv_fd``."""
    if hasattr(transport, "send_fd") and hasattr(transport, "recv_fd"):
        return int(transport.send_fd), int(transport.recv_fd)
    if isinstance(transport, tuple):
        s, r = transport
        return _fileno(s), _fileno(r)
    fd = _fileno(transport)
    return fd, fd


def _fileno(x: Any) -> int:
    return x if isinstance(x, int) else int(x.fileno())


def migrate_domain(host: Toolstack, domid: int, transport: Any,
                   callbacks: Optional[object] = None,
                   **kw: Unpack[MigrateOptions]) -> MigrationResult:
    """Live-migrate ``domid`` over ``transport`` (a connected socket or fd,
    a ``(send_fd, recv_fd)`` pair, or a :class:`~xensr.migrate.CommandTransport`);
    block until done.  Options: :class:`MigrateOptions`."""
    send_fd, recv_fd = _fds(transport)
    ex = MigrationSender(host, domid, send_fd, recv_fd, callbacks, **kw)
    r = ex.run()
    assert isinstance(r, MigrationResult)
    return r


async def aio_migrate_domain(host: Toolstack, domid: int, transport: Any,
                             callbacks: Optional[object] = None,
                             **kw: Unpack[MigrateOptions]) -> MigrationResult:
    """:func:`migrate_domain` on asyncio (many at once in one thread;
    callbacks may be coroutine functions)."""
    send_fd, recv_fd = _fds(transport)
    ex = MigrationSender(host, domid, send_fd, recv_fd, callbacks, **kw)
    r = await run_async(ex._gen, (send_fd, recv_fd), f"migration of domain {domid}")
    assert isinstance(r, MigrationResult)
    return r
