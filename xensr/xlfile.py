"""xl save files: the wrapper around the libxc stream that the helper writes.

An xl save file (what ``xl save`` writes and ``xl restore`` reads, Xen 4.17 to 4.21)
is, byte for byte (docs/protocol.md §10.1, §10.2)::

    xl header      32-byte magic, u32 byteorder 0x01020304, u32 mandatory
                   flags (JSON | STREAMv2), u32 optional flags (0),
                   u32 optional_data_len
    optional data  u32 config_len, config_len bytes of configuration
                   (JSON text with its trailing NUL)
    libxl header   "LibxlFmt", version 2, options 0 (big-endian fields)
    LIBXC_CONTEXT  libxl record, empty
    libxc stream   written by xc_domain_save in the helper, on the same fd
    trailer        EMULATOR_XENSTORE_DATA / EMULATOR_CONTEXT (HVM), END

Writing::

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    write_preamble(fd, config)            # xl header .. LIBXC_CONTEXT
    ... the helper writes the libxc stream to fd ...
    write_trailer(fd)                     # [EMULATOR records], END

Reading::

    with SaveFileReader.open(path) as f:
        f.config_json                     # the domain configuration
        ... the helper reads the libxc stream from f.fd (positioned at
            f.libxc_offset; nothing was read ahead) ...
        f.read_trailer()                  # EMULATOR records, END, EOF

All writes and reads use the raw fd (``os.write`` / ``os.read`` for exactly
the bytes of the wrapper), never Python's buffered IO, so the helper sees
the fd exactly where the wrapper ends.
"""

from __future__ import annotations

import json as _json
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import _constants as C
from . import stream as _s
from .errors import SaveRestoreError, StreamFormatError, XensrError
from .stream.xl import parse_json_config
from .stream import (
    EmulatorId,
    LibxcHeaders,
    LibxlHeader,
    LibxlRecordType,
    StreamParser,
    StreamReader,
    Summary,
    XlHeader,
)

__all__ = [
    "EmulatorRecord",
    "SaveFileReader",
    "xl_header_bytes",
    "libxl_header_bytes",
    "libxl_record_bytes",
    "preamble_bytes",
    "trailer_bytes",
    "write_preamble",
    "write_trailer",
    "write_checkpoint_end",
    "read_save_file_header",
    "save_domain_to_file",
    "restore_domain_from_file",
    "RestoredFile",
]

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Unpack

    from .api import RestoreFileOptions, RestoreResult, SaveFileOptions, SaveResult

FdLike = Union[int, IO[Any]]
Config = Union[None, bytes, str, Mapping[str, Any]]


@dataclass
class EmulatorRecord:
    """An emulator record of the libxl stream (HVM guests with a device model).

    ``type`` is ``LibxlRecordType.EMULATOR_CONTEXT`` (an opaque QEMU state
    blob) or ``LibxlRecordType.EMULATOR_XENSTORE_DATA`` (NUL-terminated
    key, value, key, value... relative to the device model's xenstore dir).
    """

    type: int
    data: bytes
    emulator_id: int = EmulatorId.QEMU_UPSTREAM
    index: int = 0

    @classmethod
    def context(cls, blob: bytes, **kw: Any) -> "EmulatorRecord":
        return cls(LibxlRecordType.EMULATOR_CONTEXT, bytes(blob), **kw)

    @classmethod
    def xenstore(cls, pairs: Iterable[Tuple[str, str]], **kw: Any) -> "EmulatorRecord":
        data = bytearray()
        for key, value in pairs:
            for s in (key, value):
                b = s.encode("utf-8")
                if b"\0" in b:
                    raise ValueError(f"xenstore key/value {s!r} contains a NUL")
                data += b + b"\0"
        return cls(LibxlRecordType.EMULATOR_XENSTORE_DATA, bytes(data), **kw)

    def xenstore_pairs(self) -> List[Tuple[str, str]]:
        rec = _s.LibxlRecord(0, self.type, 8 + len(self.data), data=self.data)
        return rec.xenstore_pairs()

    @classmethod
    def _from_record(cls, rec: _s.LibxlRecord) -> "EmulatorRecord":
        assert rec.data is not None and rec.emulator_id is not None and rec.emulator_index is not None
        return cls(rec.type, rec.data, rec.emulator_id, rec.emulator_index)


# --------------------------------------------------------------------------
# Byte builders

#: Where the configuration starts in an xl save file.
_CONFIG_OFFSET = _s.XL_HEADER.size + 4


def _config_bytes(config: Config, config_format: str) -> bytes:
    if config is None:
        return b""
    if config_format not in ("json", "xl"):
        raise ValueError(f"config_format must be 'json' or 'xl', not {config_format!r}")
    if isinstance(config, Mapping):
        if config_format != "json":
            raise ValueError("a mapping configuration can only be stored as JSON")
        try:
            data = _json.dumps(config, indent=4, sort_keys=False).encode("utf-8")
        except RecursionError:
            raise ValueError("the configuration mapping is nested too deeply to store as JSON") from None
    elif isinstance(config, str):
        data = config.encode("utf-8")
    elif isinstance(config, (bytes, bytearray, memoryview)):
        data = bytes(config)
    else:
        raise TypeError(f"config must be bytes, str, a mapping or None, not {type(config).__name__}")
    if not data:
        return b""
    if config_format == "json":
        body = data[:-1] if data.endswith(b"\0") else data
        if b"\0" in body:
            raise ValueError("JSON configuration contains a NUL byte")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StreamFormatError(
                "JSON domain configuration is not UTF-8", offset=_CONFIG_OFFSET + e.start,
                reason="configuration not UTF-8",
            ) from None
        # What a reader of the file will make of it, offsets as in the file.
        parse_json_config(text, _CONFIG_OFFSET)
        data = body + b"\0"  # libxl_domain_config_to_json() text, NUL included
    return data


def xl_header_bytes(config: Config = None, *, config_format: str = "json") -> bytes:
    """The xl header and its optional data, as ``xl save`` lays them out.

    xl always stores the 4-byte configuration length (0 when there is no
    configuration) and sets the JSON flag only when a JSON configuration
    follows.
    """
    cfg = _config_bytes(config, config_format)
    mflags = _s.XL_FLAG_STREAMV2
    if cfg and config_format == "json":
        mflags |= _s.XL_FLAG_JSON
    optional = struct.pack("=I", len(cfg)) + cfg
    return _s.XL_HEADER.pack(_s.XL_MAGIC, _s.XL_BYTEORDER, mflags, 0, len(optional)) + optional


def libxl_header_bytes() -> bytes:
    return _s.LIBXL_HEADER.pack(_s.LIBXL_IDENT, _s.LIBXL_VERSION, 0)


def libxl_record_bytes(rtype: int, body: bytes = b"") -> bytes:
    """One libxl record: header, body, zero padding to 8 bytes."""
    return _s.RECORD_HEADER.pack(rtype, len(body)) + body + b"\0" * (-len(body) % 8)


def _emulator_record_bytes(rec: EmulatorRecord) -> bytes:
    if rec.type not in (LibxlRecordType.EMULATOR_CONTEXT, LibxlRecordType.EMULATOR_XENSTORE_DATA):
        raise ValueError(f"not an emulator record type: {rec.type}")
    if rec.emulator_id not in (0, 1, 2):
        raise ValueError(f"unknown emulator id {rec.emulator_id}")
    if rec.type == LibxlRecordType.EMULATOR_XENSTORE_DATA and rec.data:
        if not rec.data.endswith(b"\0") or rec.data.count(b"\0") % 2:
            raise ValueError("xenstore data must be NUL-terminated key/value pairs")
    if len(rec.data) + 8 > 0xFFFFFFFF:
        raise ValueError("emulator record too large")
    body = _s.EMULATOR_HEADER.pack(rec.emulator_id, rec.index) + rec.data
    return libxl_record_bytes(rec.type, body)


def preamble_bytes(config: Config = None, *, config_format: str = "json", xl_header: bool = True) -> bytes:
    """xl header (unless ``xl_header`` is false), libxl header, LIBXC_CONTEXT."""
    head = xl_header_bytes(config, config_format=config_format) if xl_header else b""
    if not xl_header and config is not None:
        raise ValueError("a configuration needs the xl header")
    return head + libxl_header_bytes() + libxl_record_bytes(LibxlRecordType.LIBXC_CONTEXT)


def trailer_bytes(emulator_records: Sequence[EmulatorRecord] = (), *, end_type: int = LibxlRecordType.END) -> bytes:
    return b"".join(_emulator_record_bytes(r) for r in emulator_records) + libxl_record_bytes(end_type)


# --------------------------------------------------------------------------
# Writing to an fd


def _fileno(f: FdLike) -> int:
    """The fd of ``f``, a file object flushed first, whose position must be
    its fd's: reading it through a buffer reads ahead, and whoever reads
    the fd next (a helper, this module) would start past the bytes the
    buffer took, and fail much later on what looks like a corrupt stream."""
    if isinstance(f, int):
        return f
    flush = getattr(f, "flush", None)
    if flush is not None:
        flush()
    fd = f.fileno()
    check_file_position(f, fd)
    return fd


def check_file_position(f: IO[Any], fd: int) -> None:
    """Refuse a seekable file object whose position is not its fd's (it
    has read ahead into its buffer, or holds writes not yet flushed)."""
    try:
        if not f.seekable():
            return  # a pipe: no position to compare (read it unbuffered)
        pos, fd_pos = f.tell(), os.lseek(fd, 0, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):
        return
    if pos != fd_pos:
        raise ValueError(
            f"the file object is at offset {pos} but its fd at {fd_pos}: it has read ahead "
            "into a buffer; pass the fd (or a file opened with buffering=0), positioned "
            "where the stream starts"
        )


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    return len(data)


def write_preamble(
    f: FdLike, config: Config = None, *, config_format: str = "json", xl_header: bool = True
) -> int:
    """Writes the xl header (with the configuration), the libxl stream header
    and LIBXC_CONTEXT to ``f`` (an fd or a file object, flushed first).

    The libxc stream must follow on the same fd (the helper writes it).
    Returns the number of bytes written, which is the libxc stream's offset
    relative to where writing started.
    """
    return _write_all(_fileno(f), preamble_bytes(config, config_format=config_format, xl_header=xl_header))


def write_trailer(f: FdLike, emulator_records: Sequence[EmulatorRecord] = ()) -> int:
    """After the libxc stream: the emulator records (HVM) and END."""
    return _write_all(_fileno(f), trailer_bytes(emulator_records))


def write_checkpoint_end(f: FdLike, emulator_records: Sequence[EmulatorRecord] = ()) -> int:
    """In a checkpointed stream, after the libxc part of a checkpoint (its
    CHECKPOINT record): the emulator records and CHECKPOINT_END."""
    return _write_all(_fileno(f), trailer_bytes(emulator_records, end_type=LibxlRecordType.CHECKPOINT_END))


# --------------------------------------------------------------------------
# Reading


class SaveFileReader:
    """Reads an xl save file (or a bare libxl v2 stream) around its libxc part.

    Construction reads and validates the preamble: the xl header and its
    configuration, the libxl header and LIBXC_CONTEXT.  Afterwards ``fd`` is
    positioned at the first byte of the libxc stream (``libxc_offset``) and
    nothing beyond it has been read, so a helper can read the libxc stream
    from ``fd``.  Once the helper has consumed it (up to libxc END),
    :meth:`read_trailer` reads the emulator records and END and checks that
    nothing follows.  In a checkpointed stream, each time the helper reports
    a checkpoint, :meth:`read_checkpoint` reads the libxl records of the
    checkpoint up to CHECKPOINT_END.

    ``fmt`` is "xl" (default), "libxl" for a stream without xl header, or
    None to detect it (this peeks at 8 bytes, so only on a seekable fd).
    The fd must be in blocking mode or pollable (non-blocking reads wait).
    """

    def __init__(self, fd: FdLike, *, fmt: Optional[str] = "xl", close_fd: bool = False, max_record: int = 256 << 20):
        self.fd = _fileno(fd)
        self._close_fd = close_fd
        self._closed = False
        self.max_record = max_record
        try:
            if fmt is None:
                fmt = self._detect()
            if fmt not in ("xl", "libxl"):
                raise ValueError(f"fmt must be 'xl', 'libxl' or None, not {fmt!r}")
            self.format = fmt
            self._reader = StreamReader(self.fd)
            self._parser = StreamParser(self._reader, Summary(format=fmt))
            self.xl_header: Optional[XlHeader] = None
            if fmt == "xl":
                self.xl_header = self._parser.parse_xl_header(max_config=max_record, skip_large_config=False)
            self.libxl_header: LibxlHeader = self._parser.parse_libxl_header()
            self._parser.read_libxl_record()  # LIBXC_CONTEXT, enforced
            self.libxc_offset: int = self._reader.offset
        except BaseException:
            if close_fd:
                self._closed = True
                os.close(self.fd)
            raise
        self.checkpoints = 0
        self.emulator_records: List[EmulatorRecord] = []
        self.done = False

    @classmethod
    def open(cls, path: Union[str, "os.PathLike[str]"], **kw: Any) -> "SaveFileReader":
        """Opens ``path`` read-only (close-on-exec); the reader owns the fd."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return cls(fd, close_fd=True, **kw)

    def _detect(self) -> str:
        try:
            head = os.pread(self.fd, 32, os.lseek(self.fd, 0, os.SEEK_CUR))
        except OSError as e:
            raise ValueError("format detection needs a seekable fd; pass fmt='xl' or 'libxl'") from e
        fmt = _s.detect_format(head)
        if fmt not in ("xl", "libxl"):
            pos = os.lseek(self.fd, 0, os.SEEK_CUR)
            raise StreamFormatError(
                "not an xl save file or libxl migration stream", offset=pos, reason="unknown format"
            )
        return fmt

    # -- what the preamble said

    @property
    def config(self) -> Optional[bytes]:
        """The stored domain configuration (bytes as stored), or None."""
        return self.xl_header.config if self.xl_header else None

    @property
    def config_text(self) -> Optional[str]:
        return self.xl_header.config_text if self.xl_header else None

    @property
    def config_json(self) -> Optional[Any]:
        """The configuration parsed from JSON, or None (no config / not JSON)."""
        return self.xl_header.config_json if self.xl_header else None

    @property
    def summary(self) -> Summary:
        return self._parser.s

    # -- the libxc part

    def skip_libxc(self) -> str:
        """Reads and validates the libxc stream here instead of a helper.

        Stops after the libxc END (returns "end": call :meth:`read_trailer`
        next) or after a CHECKPOINT (returns "checkpoint": call
        :meth:`read_checkpoint`, then this again).  A checkpointed stream may
        also stop cleanly after a checkpoint (returns "eof").  Statistics
        are in ``summary``; the headers in ``libxc_headers``.
        """
        p = self._parser
        if p.s.libxc is None:
            p.parse_libxc_headers()
        else:
            self._resync()
        return p.scan_libxc_records(eof_ok=self.checkpoints > 0)

    @property
    def libxc_headers(self) -> Optional[LibxcHeaders]:
        """The libxc headers, once :meth:`skip_libxc` has read them."""
        return self._parser.s.libxc

    def _resync(self, consumed: Optional[int] = None) -> None:
        """After a helper consumed bytes from the fd, the position moved: a
        seekable fd says where; on a pipe ``consumed`` (if known) does."""
        r = self._reader
        if r.seekable:
            r.offset = os.lseek(self.fd, 0, os.SEEK_CUR)
        elif consumed is not None:
            r.offset += consumed

    def _read_section(self, how: str, consumed: Optional[int]) -> List[EmulatorRecord]:
        if self.done:
            raise RuntimeError("the stream has already been read to its END")
        self._resync(consumed)
        self._parser.libxc_returned(how)
        records = self._parser.read_libxl_section(keep_data=True, max_data=self.max_record)
        return [EmulatorRecord._from_record(r) for r in records if r.emulator_id is not None]

    def read_checkpoint(self, *, consumed: Optional[int] = None) -> List[EmulatorRecord]:
        """After the libxc part of a checkpoint (its CHECKPOINT record):
        reads the libxl records up to CHECKPOINT_END; returns the emulator
        records of this checkpoint.  ``consumed``: see :meth:`read_trailer`."""
        records = self._read_section("checkpoint", consumed)
        self.checkpoints += 1
        return records

    def read_trailer(self, *, expect_eof: bool = True, consumed: Optional[int] = None) -> List[EmulatorRecord]:
        """After the libxc END: reads the emulator records and END, and
        (``expect_eof``) checks that nothing follows.  Returns the emulator
        records; they are also kept in ``emulator_records``.

        On a seekable fd the reader finds where the helper stopped; on a
        pipe, pass ``consumed`` (bytes read by someone else since the
        reader's last read) to keep error offsets absolute."""
        records = self._read_section("end", consumed)
        if expect_eof:
            self._parser.check_eof()
        self.emulator_records = records
        self.done = True
        return records

    @property
    def offset(self) -> int:
        """Offset of the next byte the reader would parse."""
        return self._reader.offset

    # -- lifetime

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        if self._close_fd:
            os.close(self.fd)

    def __enter__(self) -> "SaveFileReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_close_fd", False):
            try:
                os.close(self.fd)
            except OSError:
                pass
            self._closed = True


def read_save_file_header(path: Union[str, "os.PathLike[str]"]) -> XlHeader:
    """The xl header and configuration of a save file (nothing more is read)."""
    with SaveFileReader.open(path) as f:
        assert f.xl_header is not None
        return f.xl_header


# --------------------------------------------------------------------------
# Save to / restore from a file in one call

EmulatorSource = Union[Sequence[EmulatorRecord], Callable[[], Sequence[EmulatorRecord]], None]


class _WrappedCallbacks:
    """The caller's callbacks, with some replaced.  Only methods the caller
    has (plus the replacements) exist, since their presence sets cbflags."""

    def __init__(self, callbacks: Optional[object], names: Sequence[str], **overrides: Callable[..., Any]):
        from .callbacks import find

        for name in names:
            fn = find(callbacks, name)
            if fn is not None:
                setattr(self, name, fn)
        for name, fn in overrides.items():
            setattr(self, name, fn)


def _emulator_records(source: EmulatorSource) -> Sequence[EmulatorRecord]:
    if source is None:
        return ()
    if callable(source):
        return tuple(source())
    return tuple(source)


def save_domain_to_file(
    domid: int,
    path: Union[str, "os.PathLike[str]"],
    callbacks: Optional[object] = None,
    *,
    config: Config = None,
    config_format: str = "json",
    emulator_records: EmulatorSource = None,
    stream_type: int = C.XC_STREAM_PLAIN,
    mode: int = 0o600,
    keep_partial: bool = False,
    fsync: bool = False,
    **save_kw: Unpack[SaveFileOptions],
) -> "SaveResult":
    """Saves domain ``domid`` into an xl save file at ``path``; blocks.

    Writes the xl header with ``config`` (the domain configuration, JSON by
    default, as ``xl save`` stores it), the libxl stream header and
    LIBXC_CONTEXT; runs :func:`xensr.save_domain` on the same fd (the helper
    writes the libxc stream); then writes ``emulator_records`` (a sequence,
    or a function called once the libxc stream is done) and END.  The file
    is created with ``mode`` (guest memory is private: 0600 by default).

    ``stream_type=XC_STREAM_REMUS`` records a checkpointed stream: at each
    checkpoint the emulator records and CHECKPOINT_END are written before
    the caller's ``checkpoint()`` callback (required) decides whether to
    take another; the file then ends after the last checkpoint, as a Remus
    stream does.  On failure (unless ``keep_partial``) the partial stream
    goes: a file this call created is removed, an existing regular file
    is emptied; a FIFO, a device or what a symlink points to is written
    as it is and never removed.  A write to the file that fails (ENOSPC
    on a full device...) is a :class:`~xensr.SaveRestoreError` with its
    ``errno``.  The other keyword options (:class:`xensr.api.SaveFileOptions`)
    go to :func:`xensr.save_domain`.  Returns its :class:`~xensr.SaveResult`.
    """
    from .api import SaveFileOptions, _options, save_domain
    from .callbacks import SAVE_CALLBACKS, find

    _options("save_domain_to_file", save_kw, SaveFileOptions)
    if stream_type not in (C.XC_STREAM_PLAIN, C.XC_STREAM_REMUS):
        raise ValueError("save_domain_to_file supports XC_STREAM_PLAIN and XC_STREAM_REMUS")
    preamble = preamble_bytes(config, config_format=config_format)  # validate before creating the file
    fd, created = _open_for_save(path, mode)
    ok = False
    try:
        _writing(_write_all, fd, preamble)
        cbs: Optional[object] = callbacks
        if stream_type == C.XC_STREAM_REMUS:
            user_checkpoint = find(callbacks, "checkpoint")
            if user_checkpoint is None:
                raise ValueError("a checkpointed save needs a checkpoint() callback")

            def checkpoint() -> Any:
                _writing(write_checkpoint_end, fd, _emulator_records(emulator_records))
                return user_checkpoint()

            cbs = _WrappedCallbacks(callbacks, SAVE_CALLBACKS, checkpoint=checkpoint)
        result = save_domain(domid, fd, cbs, stream_type=stream_type, **save_kw)
        if stream_type == C.XC_STREAM_PLAIN:
            _writing(write_trailer, fd, _emulator_records(emulator_records))
        if fsync:
            _writing(os.fsync, fd)
        ok = True
    finally:
        _close_after_save(fd, path, ok=ok, created=created, keep_partial=keep_partial)
    return result


def _open_for_save(path: Union[str, "os.PathLike[str]"], mode: int) -> Tuple[int, bool]:
    """Opens ``path`` for writing a save; returns the fd and whether this
    call created the file.  Whatever is already there (a regular file, a
    FIFO, a device, a symlink and what it points to) is written as it is."""
    flags = os.O_WRONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, mode), True
    except FileExistsError:
        pass
    fd = os.open(path, flags | os.O_CREAT, mode)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, False


def _close_after_save(fd: int, path: Union[str, "os.PathLike[str]"], *, ok: bool, created: bool,
                      keep_partial: bool) -> None:
    """Closes the save's fd.  After a failure (unless ``keep_partial``) the
    partial stream goes: a file this call created is removed, an existing
    regular file is emptied, anything else (a FIFO, a device) is left as
    it is.  A failing close of a completed save is an error of the save."""
    if ok:
        _writing(os.close, fd)
        return
    discard = not keep_partial
    try:
        if discard and not created and stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
    except OSError:
        pass  # the save's own error is the one to report
    try:
        os.close(fd)
    except OSError:
        pass
    if discard and created:
        try:
            os.unlink(path)
        except OSError:
            pass


def _writing(write: Callable[..., Any], *args: Any) -> Any:
    """Runs a write to the save file: an OSError there (ENOSPC from a full
    device, EIO...) fails the save with a :class:`SaveRestoreError`
    carrying its errno."""
    try:
        return write(*args)
    except OSError as e:
        err = e.errno or 0
        raise SaveRestoreError(
            f"writing the save file failed: {e.strerror or e}", retval=-1, errno=err
        ) from e


@dataclass(frozen=True)
class RestoredFile:
    """What :func:`restore_domain_from_file` returns."""

    #: The restore's result (store/console frames, helper details).
    result: "RestoreResult"
    #: The xl header and the configuration it carried.
    xl_header: Optional[XlHeader]
    #: Emulator records to hand to the device model (of the last complete
    #: checkpoint, for a checkpointed stream).
    emulator_records: List[EmulatorRecord] = field(default_factory=list)
    #: Checkpoints read (checkpointed streams).
    checkpoints: int = 0
    #: "END", or "checkpoint" when a checkpointed stream stopped after a
    #: complete checkpoint (the domain is restored to that checkpoint).
    ended: str = "END"

    @property
    def config(self) -> Optional[bytes]:
        return self.xl_header.config if self.xl_header else None

    @property
    def config_json(self) -> Optional[Any]:
        return self.xl_header.config_json if self.xl_header else None


def restore_domain_from_file(
    domid: int,
    path: Union[str, "os.PathLike[str]"],
    callbacks: Optional[object] = None,
    *,
    store_evtchn: int,
    console_evtchn: int,
    stream_type: int = C.XC_STREAM_PLAIN,
    max_record: int = 256 << 20,
    **restore_kw: Unpack[RestoreFileOptions],
) -> RestoredFile:
    """Restores an xl save file at ``path`` into domain ``domid``; blocks.

    Validates the xl header and the libxl records before the libxc stream,
    runs :func:`xensr.restore_domain` on the fd positioned at the libxc
    stream, then reads and validates the emulator records and END (and
    that nothing follows).  With ``stream_type=XC_STREAM_REMUS`` the file
    may hold checkpoints: at each one the libxl records up to
    CHECKPOINT_END are read before the caller's ``checkpoint()`` (optional)
    is asked; a file that stops after a complete checkpoint restores that
    checkpoint, as a Remus secondary fails over.  The other keyword options
    (:class:`xensr.api.RestoreFileOptions`) go to :func:`xensr.restore_domain`.  A malformed file raises
    :class:`StreamFormatError` (before the helper runs when the problem is
    in the preamble).
    """
    from .api import RestoreFileOptions, _options, restore_domain
    from .callbacks import RESTORE_CALLBACKS, find

    _options("restore_domain_from_file", restore_kw, RestoreFileOptions)
    if stream_type not in (C.XC_STREAM_PLAIN, C.XC_STREAM_REMUS):
        raise ValueError("restore_domain_from_file supports XC_STREAM_PLAIN and XC_STREAM_REMUS")
    with SaveFileReader.open(path, max_record=max_record) as f:
        cbs: Optional[object] = callbacks
        last: List[EmulatorRecord] = []
        malformed: List[StreamFormatError] = []
        if stream_type == C.XC_STREAM_REMUS:
            user_checkpoint = find(callbacks, "checkpoint")

            def checkpoint() -> Any:
                try:
                    records = f.read_checkpoint()
                except StreamFormatError as e:
                    if e.reason == "truncated":
                        # The sender stopped inside this checkpoint: keep
                        # the last complete one (libxl's failover).
                        return C.XGR_CHECKPOINT_FAILOVER
                    # The file is malformed: libxenguest gives up (an
                    # error reply, so that it unwinds), and the caller
                    # gets this error, not the restore's.
                    malformed.append(e)
                    return C.XGR_CHECKPOINT_ERROR
                last[:] = records
                if user_checkpoint is not None:
                    return user_checkpoint()
                return C.XGR_CHECKPOINT_SUCCESS

            cbs = _WrappedCallbacks(callbacks, RESTORE_CALLBACKS, checkpoint=checkpoint)
        try:
            result = restore_domain(
                domid, f.fd, cbs, store_evtchn=store_evtchn, console_evtchn=console_evtchn,
                stream_type=stream_type, **restore_kw
            )
        except XensrError as e:
            if malformed:
                raise malformed[0] from e
            raise
        if malformed:
            raise malformed[0]
        f._resync()
        ended = "END"
        if stream_type == C.XC_STREAM_REMUS and f.checkpoints and f._reader.at_eof():
            ended = "checkpoint"
            records = last
        else:
            records = f.read_trailer()
        return RestoredFile(
            result=result,
            xl_header=f.xl_header,
            emulator_records=list(records),
            checkpoints=f.checkpoints,
            ended=ended,
        )
