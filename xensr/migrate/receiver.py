"""The receiving side of a migration: ``xl migrate-receive``'s bytes and
semantics, into a domain of a host or into an xl save file.

    result = receive_domain(host, send_fd=1, recv_fd=0)       # as xl: stdout, stdin
    result = receive_to_file("guest.save", send_fd=1, recv_fd=0)

The receiver writes the banner, reads the xl header and configuration,
creates ``NAME--incoming`` (paused) through the host, restores the stream
into it, says "ready", waits for GO, renames the copy to NAME and unpauses
it (unless ``paused``), then reports.  Whatever it created is destroyed on
any failure before its report says the copy runs; a report it could not
write leaves the copy as it is (as xl), since the sender may resume.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

from ..api import HelperOptions, RestoreOperation, RestoreResult
from ..errors import ToolstackError, XensrError
from ..stream import format as F
from ..toolstack import IncomingToolstack
from ..xlfile import EmulatorRecord, _write_all
from . import wire as W
from .engine import Exchange, Read, Run, Steps, Write

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ReceiveResult", "ReceiveOptions", "MigrationReceiver", "receive_domain", "aio_receive_domain",
           "receive_to_file"]

_SIDE = "receiver"


@dataclass(frozen=True)
class ReceiveResult:
    """A migration received."""

    #: The new domain (None when received into a file) and its name.
    domid: Optional[int]
    name: str
    #: The configuration received (libxl JSON, NUL removed).
    config: bytes
    #: The restore's result (None when received into a file).
    restore: Optional[RestoreResult]
    #: The libxl stream's emulator records (HVM device model state).
    emulator_records: List[EmulatorRecord] = field(default_factory=list)
    #: Whether the domain was left paused (``-p``).
    paused: bool = False
    #: Bytes of the stream written to the file (``receive_to_file``).
    file_bytes: int = 0
    #: :func:`time.monotonic` when the unpause returned (None: left
    #: paused, or received into a file).
    unpaused_at: Optional[float] = None
    #: This side's part of the downtime, in seconds: from the end of the
    #: stream (the libxl END record read, the restore done) to the
    #: unpause's return: "ready", the wait for GO, the rename and the
    #: unpause.  None as ``unpaused_at``.  The sender's
    #: :attr:`MigrationResult.suspended` covers it, from the suspend.
    unpause_seconds: Optional[float] = None


def _header_error(message: str) -> W.MigrationError:
    return W.MigrationError(message, stage="header", side=_SIDE, destination="none")


def _read(fd: int, n: int, what: str, stage: str, **state: str) -> Steps:
    """Exactly n bytes, or PeerClosed."""
    try:
        data = yield Read(fd, n)
    except OSError as e:
        raise W.io_error(e, f"reading {what}", stage=stage, side=_SIDE, **state) from e
    if len(data) < n:
        raise W.PeerClosed(f"the sender closed the connection after {len(data)} of the "
                           f"{n} bytes of {what}", stage=stage, side=_SIDE, **state)
    return data


def read_preamble(fd: int) -> Steps:
    """The xl header, configuration, libxl header and LIBXC_CONTEXT:
    (the bytes read, the configuration without its NUL)."""
    raw = yield from _read(fd, F.XL_HEADER.size, "the xl header", "header", destination="none")
    magic, order, mflags, oflags, optlen = F.XL_HEADER.unpack(raw)
    if magic != F.XL_MAGIC:
        raise _header_error(f"not an xl migration stream: bad magic {magic!r}")
    if order != F.XL_BYTEORDER:
        raise _header_error(f"byte order 0x{order:08x}: a sender of the other endianness")
    if mflags & ~F.XL_FLAGS_KNOWN:
        raise _header_error(f"unknown mandatory flags 0x{mflags:x}")
    if not mflags & F.XL_FLAG_STREAMV2:
        raise _header_error("a legacy (pre-Xen 4.6) stream, which is not supported")
    if not mflags & F.XL_FLAG_JSON:
        raise _header_error("the configuration is not libxl JSON (xl cfg text is not supported)")
    if optlen < 4 or optlen > (16 << 20):
        raise _header_error(f"optional data of {optlen} bytes")
    opt = yield from _read(fd, optlen, "the configuration", "header", destination="none")
    (clen,) = F.XL_CONFIG_LEN.unpack_from(opt)
    if clen != optlen - 4:
        raise _header_error(f"configuration length {clen} in {optlen} bytes of optional data")
    config = bytes(opt[4:]).rstrip(b"\0")
    try:
        cfg = json.loads(config.decode("utf-8"))
        name = cfg["c_info"]["name"]
        if not isinstance(name, str) or not name:
            raise ValueError("c_info.name is empty")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise _header_error(f"the configuration names no domain: {e}") from e
    lx = yield from _read(fd, F.LIBXL_HEADER.size + F.RECORD_HEADER.size,
                          "the libxl stream header", "stream", destination="none")
    ident, version, options = F.LIBXL_HEADER.unpack_from(lx)
    rtype, rlen = F.RECORD_HEADER.unpack_from(lx, F.LIBXL_HEADER.size)
    if ident != F.LIBXL_IDENT or version != F.LIBXL_VERSION or options != 0:
        raise W.MigrationError(f"not a libxl v2 stream (ident 0x{ident:x}, version {version}, "
                               f"options 0x{options:x})", stage="stream", side=_SIDE,
                               destination="none")
    if rtype != F.LibxlRecordType.LIBXC_CONTEXT or rlen != 0:
        raise W.MigrationError(f"libxl record {rtype} (length {rlen}) where LIBXC_CONTEXT was due",
                               stage="stream", side=_SIDE, destination="none")
    return bytes(raw) + bytes(opt) + bytes(lx), config, name


def _record(fd: int, what: str, state: str) -> Steps:
    """One record (header, body, padding): (type, body, all its bytes)."""
    head = yield from _read(fd, F.RECORD_HEADER.size, f"a {what} record header", "stream",
                            destination=state)
    rtype, length = F.RECORD_HEADER.unpack(head)
    if length > F.REC_LENGTH_MAX:
        raise W.MigrationError(f"{what} record of {length} bytes", stage="stream", side=_SIDE,
                               destination=state)
    padded = length + (-length % F.REC_ALIGN)
    body = b""
    if padded:
        body = yield from _read(fd, padded, f"a {what} record", "stream", destination=state)
    return rtype, bytes(body[:length]), bytes(head) + bytes(body)


def _libxl_trailer(fd: int, state: str) -> Steps:
    """The libxl records after the libxc stream, to END: the emulator
    records and all the bytes."""
    records: List[EmulatorRecord] = []
    raw = bytearray()
    while True:
        rtype, body, allb = yield from _record(fd, "libxl", state)
        raw += allb
        if rtype == F.LibxlRecordType.END:
            return records, bytes(raw)
        if rtype in (F.LibxlRecordType.EMULATOR_CONTEXT, F.LibxlRecordType.EMULATOR_XENSTORE_DATA):
            if len(body) < F.EMULATOR_HEADER.size:
                raise W.MigrationError("short emulator record", stage="stream", side=_SIDE,
                                       destination=state)
            eid, index = F.EMULATOR_HEADER.unpack_from(body)
            records.append(EmulatorRecord(rtype, body[F.EMULATOR_HEADER.size:], eid, index))
            continue
        raise W.MigrationError(f"unexpected libxl record type {rtype} in a migration",
                               stage="stream", side=_SIDE, destination=state)


def _handshake(send_fd: int, recv_fd: int, start: Any, destroy: Any, state: str,
               started: Optional[List[bool]] = None) -> Steps:
    """ready, GO, start the copy, report; returns the status sent.
    ``started[0]`` becomes True once the copy runs (renamed, unpaused)."""
    try:
        yield Write(send_fd, W.READY)
    except OSError as e:
        destroy()
        raise W.io_error(e, "writing ready", stage="ready", side=_SIDE, destination=state) from e
    go_ok = True
    try:
        go = yield Read(recv_fd, len(W.GO))
    except OSError:
        go = b""
    problem: Optional[str] = None
    if go != W.GO:
        go_ok = False
        status = W.STATUS_BAD_GO
        problem = ("the sender closed the connection instead of GO" if len(go) < len(W.GO)
                   else f"expected GO, received {go[:60]!r}")
    else:
        status = W.STATUS_OK
        try:
            start()
            if started is not None:
                started[0] = True   # from here on the copy runs: it stays
        except ToolstackError as e:
            status = W.STATUS_FAIL
            problem = f"starting the copy failed: {e}"
    gone = "destroyed" if state != "none" else "none"
    try:
        yield Write(send_fd, W.REPORT + bytes([status]))
    except OSError as e:
        if status == W.STATUS_OK:
            # As xl: the copy runs and stays; the sender cannot know.
            raise W.io_error(e, "writing the report", stage="report", side=_SIDE,
                             destination="kept") from e
        destroy()
        raise W.MigrationError(f"{problem}; then writing the report failed: {e.strerror or e}",
                               stage="go", side=_SIDE, destination=gone) from e
    if status == W.STATUS_OK:
        return status
    destroy()
    try:
        yield Write(send_fd, W.GO)
    except OSError:
        pass        # the sender is gone: it cannot resume anyway
    raise W.MigrationError(problem or "failed", stage="go", side=_SIDE, destination=gone)


def _greet(send_fd: int, recv_fd: int, *, debug: bool, log: Any) -> Steps:
    """The banner out, the sender's xl header and configuration in (logged
    with ``-d``); returns what :func:`read_preamble` returns."""
    try:
        yield Write(send_fd, W.BANNER)
    except OSError as e:
        raise W.io_error(e, "writing the banner", stage="banner", side=_SIDE,
                         destination="none") from e
    pre, config, name = yield from read_preamble(recv_fd)
    if debug and log is not None:
        log(config.decode("utf-8", "replace"))
    return pre, config, name


def _receiver_steps(host: IncomingToolstack, send_fd: int, recv_fd: int, *, paused: bool,
                    debug: bool, callbacks: Optional[object], restore_options: Dict[str, Any],
                    log: Any) -> Steps:
    _, config, name = yield from _greet(send_fd, recv_fd, debug=debug, log=log)
    incoming = name + W.INCOMING_SUFFIX
    try:
        domid = host.create_incoming(config, incoming)
    except (ToolstackError, ValueError) as e:
        raise W.MigrationError(f"creating {incoming} failed: {e}", stage="stream", side=_SIDE,
                               destination="none") from e
    destroyed = [False]

    def destroy() -> None:
        if not destroyed[0]:
            destroyed[0] = True
            try:
                host.destroy(domid)
            except ToolstackError:
                pass

    try:
        params = host.restore_parameters(domid)
        op = RestoreOperation(domid, recv_fd, callbacks,
                              store_evtchn=int(params["store_evtchn"]),
                              console_evtchn=int(params["console_evtchn"]),
                              store_domid=int(params.get("store_domid", 0)),
                              console_domid=int(params.get("console_domid", 0)),
                              **restore_options)
        restore = yield Run(op)
        records, _ = yield from _libxl_trailer(recv_fd, "destroyed")
        stream_end = time.monotonic()
        host.restored(domid, restore.store_gfn, restore.console_gfn)
    except (XensrError, OSError) as e:
        destroy()
        if isinstance(e, W.MigrationError):
            raise
        raise W.MigrationError(f"the restore into {incoming} (domain {domid}) failed: {e}",
                               stage="stream", side=_SIDE, destination="destroyed") from e
    except BaseException:
        destroy()           # Ctrl-C, SIGTERM, an abort
        raise

    unpaused: List[float] = []

    def start() -> None:
        host.rename(domid, name)
        if not paused:
            host.unpause(domid)
            unpaused.append(time.monotonic())

    started = [False]
    try:
        yield from _handshake(send_fd, recv_fd, start, destroy, "destroyed", started)
    except W.MigrationError:
        raise
    except BaseException:
        if not started[0]:
            destroy()       # interrupted before the copy was started
        raise
    return ReceiveResult(domid=domid, name=name, config=config, restore=restore,
                         emulator_records=records, paused=paused,
                         unpaused_at=unpaused[0] if unpaused else None,
                         unpause_seconds=unpaused[0] - stream_end if unpaused else None)


def copy_stream(recv_fd: int, out: Any) -> Steps:
    """Read the libxc stream and the libxl records after it, to the libxl
    END, handing every byte to ``out``; returns the emulator records."""
    head = yield from _read(recv_fd, F.LIBXC_IHDR.size + F.LIBXC_DHDR.size,
                            "the libxc headers", "stream", destination="none")
    marker, ident, version = F.LIBXC_IHDR.unpack_from(head)[:3]
    if marker != F.LIBXC_MARKER or ident != F.LIBXC_ID or version not in F.LIBXC_VERSIONS:
        raise W.MigrationError("not a libxc migration stream", stage="stream", side=_SIDE,
                               destination="none")
    out(head)
    while True:
        rtype, _, allb = yield from _record(recv_fd, "libxc", "none")
        out(allb)
        if rtype == F.LibxcRecordType.END:
            break
    records, raw = yield from _libxl_trailer(recv_fd, "none")
    out(raw)
    return records


def _to_file_steps(out_fd: int, send_fd: int, recv_fd: int, *, debug: bool, log: Any) -> Steps:
    pre, config, name = yield from _greet(send_fd, recv_fd, debug=debug, log=log)
    total = [0]

    def out(data: bytes) -> None:
        total[0] += _write_all(out_fd, data)

    try:
        out(pre)
        records = yield from copy_stream(recv_fd, out)
    except OSError as e:
        raise W.MigrationError(f"writing the file failed: {e.strerror or e}", stage="stream",
                               side=_SIDE, destination="none") from e
    yield from _handshake(send_fd, recv_fd, lambda: None, lambda: None, "none")
    return ReceiveResult(domid=None, name=name, config=config, restore=None,
                         emulator_records=records, file_bytes=total[0])


class ReceiveOptions(HelperOptions, total=False):
    """Options of a migration's receiver (and those of the restore's helper)."""

    #: Leave the copy paused (xl's ``-p``).
    paused: bool
    #: Hand the configuration received to ``log`` (xl's ``-d``).
    debug: bool
    log: Optional[Callable[[str], Any]]
    #: The restore's callbacks.
    callbacks: Optional[object]


_RECEIVER_KEYS = ("paused", "debug", "log", "callbacks")


class MigrationReceiver(Exchange):
    """One incoming migration into ``host`` (see the module doc), driven
    by any loop.  ``send_fd``: where the banner, ready and report go
    (xl: stdout); ``recv_fd``: the stream (xl: stdin).  The keyword
    options are those of :class:`ReceiveOptions`; the helper's go to the
    restore."""

    def __init__(self, host: IncomingToolstack, send_fd: int, recv_fd: int,
                 **options: Unpack[ReceiveOptions]):
        o: Dict[str, Any] = dict(options)
        for key in o:
            if key not in ReceiveOptions.__optional_keys__:
                raise TypeError(f"MigrationReceiver() got an unexpected keyword argument {key!r}")
        mine = {key: o.pop(key) for key in _RECEIVER_KEYS if key in o}
        steps = _receiver_steps(host, send_fd, recv_fd, paused=bool(mine.get("paused", False)),
                                debug=bool(mine.get("debug", False)),
                                callbacks=mine.get("callbacks"), restore_options=o,
                                log=mine.get("log"))
        super().__init__(steps, (send_fd, recv_fd), "incoming migration")

    def result(self) -> ReceiveResult:
        r = super().result()
        assert isinstance(r, ReceiveResult)
        return r


def receive_domain(host: IncomingToolstack, send_fd: int = 1, recv_fd: int = 0,
                   **kw: Unpack[ReceiveOptions]) -> ReceiveResult:
    """Receive one migration into ``host``; block until done.  Options:
    :class:`ReceiveOptions`."""
    r = MigrationReceiver(host, send_fd, recv_fd, **kw).run()
    assert isinstance(r, ReceiveResult)
    return r


async def aio_receive_domain(host: IncomingToolstack, send_fd: int = 1, recv_fd: int = 0,
                             **kw: Unpack[ReceiveOptions]) -> ReceiveResult:
    """:func:`receive_domain` on asyncio (many at once in one thread)."""
    from .engine import run_async

    ex = MigrationReceiver(host, send_fd, recv_fd, **kw)
    r = await run_async(ex._gen, (send_fd, recv_fd), "incoming migration")
    assert isinstance(r, ReceiveResult)
    return r


def receive_to_file(path: Union[str, "os.PathLike[str]"], send_fd: int = 1, recv_fd: int = 0,
                    *, debug: bool = False, log: Any = None, mode: int = 0o600) -> ReceiveResult:
    """Receive one migration into an xl save file at ``path`` (no
    hypervisor involved; ``xl restore`` or :func:`xensr.restore_domain_from_file`
    read it).  A failed reception removes the file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    ok = False
    try:
        ex = Exchange(_to_file_steps(fd, send_fd, recv_fd, debug=debug, log=log),
                      (send_fd, recv_fd), "incoming migration to a file")
        r = ex.run()
        os.fsync(fd)
        ok = True
    finally:
        os.close(fd)
        if not ok:
            try:
                os.unlink(path)
            except OSError:
                pass
    assert isinstance(r, ReceiveResult)
    return r
