"""Emitter: the callout's decoders and dispatch (``xensr/_msgs.pxi``).

Included by ``xensr/_xc.pyx``, which must have cimported ``memcpy`` and the
fixed-width integer types and imported the error classes of
``xensr.errors`` before the include.  Provides:

* ``_decode_body(body, n, direction)``: strict decoding of one frame body
  into ``(msgtype, args)``; every malformation raises its own
  :class:`~xensr.errors.ProtocolError` subclass naming the message and the
  byte offset; nothing is read past ``n``.
* ``_dispatch(handler, msgtype, args)``: calls ``handler.msg_<name>(*args)``.
* ``_reply_kind(msgtype)``: 0 none, 1 synchronous (W), 2 asynchronous (A).
* ``_encode_reply(value)``: the 4-byte native int reply.
* ``compute_cbflags(callbacks, direction)``: cbflags for an object's methods.
"""

from __future__ import annotations

from typing import List

from .model import Arg, Direction, Kind, Message, Reply, Table
from .output import GeneratedFile, Lines, banner, join_sections

PATH = "xensr/_msgs.pxi"

_CTYPES = {
    "uint16_t": "uint16_t", "uint32_t": "uint32_t", "int": "int32_t",
    "unsigned": "uint32_t", "unsigned long": "uint64_t", "long": "int64_t",
    "xen_pfn_t": "uint64_t",
}

_REPLY_CODE = {Reply.NONE: 0, Reply.SYNC: 1, Reply.ASYNC: 2}


def _prelude(table: Table) -> Lines:
    out = Lines()
    out(*banner("#", table.digest, "xensr callout decoders and dispatch."))
    out("", f'MSGS_DIGEST = "{table.digest}"')
    out(f"FRAME_BODY_MAX = {table.frame_body_max}")
    out(f"DIR_SAVE = {int(Direction.SAVE)}", f"DIR_RESTORE = {int(Direction.RESTORE)}")
    names = ", ".join(f'"{m.name}"' for m in table)
    out(f"_NAMES = (None, {names})")
    return out


def _helpers() -> Lines:
    out = Lines()
    out("cdef inline str _name_of(int msgtype):")
    with out.indent():
        out("if 0 < msgtype < len(_NAMES):")
        with out.indent():
            out("return _NAMES[msgtype]")
        out("return None")
    out("")
    out("cdef object _short(int msgtype, str field, Py_ssize_t off, Py_ssize_t need, Py_ssize_t n):")
    with out.indent():
        out("name = _name_of(msgtype)")
        out("raise ShortFrameError(")
        with out.indent():
            out('f"{name} message (type {msgtype}): field {field} needs {need} bytes at "')
            out('f"offset {off} but the body has {n - off} left",')
            out("msgtype=msgtype, msgname=name, offset=off)")
    out("")
    out("cdef object _read_string(const unsigned char *body, Py_ssize_t n, Py_ssize_t *off,")
    out("                         int msgtype, str field):")
    with out.indent():
        out("cdef uint32_t length", "cdef Py_ssize_t at = off[0]")
        out("if n - at < 4:")
        with out.indent():
            out("_short(msgtype, field, at, 4, n)")
        out("memcpy(&length, body + at, 4)")
        out("if length == 0:")
        with out.indent():
            out("name = _name_of(msgtype)")
            out("raise EmptyStringError(")
            with out.indent():
                out('f"{name} message (type {msgtype}): STRING {field} at offset {at} "')
                out('"has length 0 (it must hold at least its NUL)",')
                out("msgtype=msgtype, msgname=name, offset=at)")
        out("if <uint64_t>(n - at - 4) < <uint64_t>length:")
        with out.indent():
            out("_short(msgtype, field, at + 4, <Py_ssize_t>length, n)")
        out("if body[at + 4 + length - 1] != 0:")
        with out.indent():
            out("name = _name_of(msgtype)")
            out("raise UnterminatedStringError(")
            with out.indent():
                out('f"{name} message (type {msgtype}): STRING {field} starting at {at} "')
                out('f"does not end in NUL: byte at offset {at + 4 + length - 1} is "')
                out('f"{body[at + 4 + length - 1]:#04x}",')
                out("msgtype=msgtype, msgname=name, offset=at + 4 + length - 1)")
        out("off[0] = at + 4 + length")
        out("return (<const char *>body + at + 4)[:length - 1].decode(\"utf-8\", \"backslashreplace\")")
    out("")
    out("cdef object _read_block(const unsigned char *body, Py_ssize_t n, Py_ssize_t *off,")
    out("                        int msgtype, str field):")
    with out.indent():
        out("cdef uint32_t length", "cdef Py_ssize_t at = off[0]")
        out("if n - at < 4:")
        with out.indent():
            out("_short(msgtype, field, at, 4, n)")
        out("memcpy(&length, body + at, 4)")
        out("if <uint64_t>(n - at - 4) < <uint64_t>length:")
        with out.indent():
            out("_short(msgtype, field, at + 4, <Py_ssize_t>length, n)")
        out("off[0] = at + 4 + length")
        out("return (<const char *>body + at + 4)[:length]")
    out("")
    out("cdef object _trailing(int msgtype, Py_ssize_t off, Py_ssize_t n):")
    with out.indent():
        out("name = _name_of(msgtype)")
        out("raise TrailingBytesError(")
        with out.indent():
            out('f"{name} message (type {msgtype}): {n - off} trailing bytes at offset {off}",')
            out("msgtype=msgtype, msgname=name, offset=off)")
    return out


def _decoder(msg: Message) -> Lines:
    out = Lines()
    out(f"cdef object _decode_{msg.name}(const unsigned char *body, Py_ssize_t n):")
    with out.indent():
        out("cdef Py_ssize_t off = 2")
        for arg in msg.args:
            if arg.type.kind is Kind.INTEGER:
                out(f"cdef {_CTYPES[arg.type.name]} {arg.name}")
        for arg in msg.args:
            out(*_read_arg(msg, arg))
        out("if off != n:")
        with out.indent():
            out(f"_trailing({msg.number}, off, n)")
        values = "".join(f"{a.name}, " for a in msg.args)
        out(f"return ({msg.number}, ({values}))")
    return out


def _read_arg(msg: Message, arg: Arg) -> List[str]:
    if arg.type.kind is Kind.INTEGER:
        size = arg.type.size
        return [
            f"if n - off < {size}:",
            f'    _short({msg.number}, "{arg.name}", off, {size}, n)',
            f"memcpy(&{arg.name}, body + off, {size})",
            f"off += {size}",
        ]
    reader = "_read_string" if arg.type.kind is Kind.STRING else "_read_block"
    return [f'{arg.name} = {reader}(body, n, &off, {msg.number}, "{arg.name}")']


def _decode_body(table: Table) -> Lines:
    out = Lines()
    out("cdef object _decode_body(const unsigned char *body, Py_ssize_t n, int direction):")
    with out.indent():
        out("cdef uint16_t msgtype")
        out("if n < 2:")
        with out.indent():
            out("raise ShortFrameError(")
            with out.indent():
                out('f"frame body of {n} bytes is too short for a message type",')
                out("offset=0)")
        out("memcpy(&msgtype, body, 2)")
        for msg in table:
            out(f"if msgtype == {msg.number}:")
            with out.indent():
                dirs = []
                if not msg.save:
                    dirs.append(f"direction == {int(Direction.SAVE)}")
                if not msg.restore:
                    dirs.append(f"direction == {int(Direction.RESTORE)}")
                if dirs:
                    out(f"if {' or '.join(dirs)}:")
                    with out.indent():
                        out(f"_wrong_direction({msg.number}, direction)")
                out(f"return _decode_{msg.name}(body, n)")
        out("raise UnknownMessageError(")
        with out.indent():
            out('f"unknown message type {msgtype} (the table has 1 to {len(_NAMES) - 1})",')
            out("msgtype=msgtype, offset=0)")
    out("")
    out("cdef object _wrong_direction(int msgtype, int direction):")
    with out.indent():
        out("name = _name_of(msgtype)")
        out('which = "save" if direction == DIR_SAVE else "restore"')
        out("raise WrongDirectionError(")
        with out.indent():
            out('f"{name} message (type {msgtype}) is not valid when the helper does a {which}",')
            out("msgtype=msgtype, msgname=name, offset=0)")
    out("")
    out("def decode_frame_body(body, int direction):")
    with out.indent():
        out('"""Decode one frame body (after the u16 length) into (msgtype, args)."""')
        out("cdef const unsigned char[::1] view = body")
        out("if view.shape[0] == 0:")
        with out.indent():
            out("return _decode_body(NULL, 0, direction)")
        out("return _decode_body(&view[0], view.shape[0], direction)")
    return out


def _dispatch(table: Table) -> Lines:
    out = Lines()
    out("cdef object _dispatch(object handler, int msgtype, tuple args):")
    with out.indent():
        out('"""Call handler.msg_<name>(*args); return what it returns."""')
        for msg in table:
            out(f"if msgtype == {msg.number}:")
            with out.indent():
                out(f"return handler.msg_{msg.name}(*args)")
        out('raise UnknownMessageError(f"unknown message type {msgtype}", msgtype=msgtype)')
    out("")
    _lookup(out, table, "int", "_reply_kind", "_REPLY_KINDS",
            [_REPLY_CODE[m.reply] for m in table])
    _lookup(out, table, "unsigned", "_cbflag_bit", "_CBFLAG_BITS",
            [1 << m.number if m.cbflag else 0 for m in table])
    out("def reply_kind(int msgtype):")
    with out.indent():
        out('"""0: no reply, 1: synchronous (W), 2: asynchronous (A)."""')
        out("return _reply_kind(msgtype)")
    return out


def _lookup(out: Lines, table: Table, ctype: str, func: str, array: str,
            values: List[int]) -> None:
    """A C array indexed by message number, and its bounds-checked getter
    (0 for numbers outside the table)."""
    size = table.max_number + 1
    out(f"cdef {ctype}[{size}] {array} = [0, {', '.join(map(str, values))}]")
    out("")
    out(f"cdef inline {ctype} {func}(int msgtype) noexcept:")
    with out.indent():
        out(f"if 0 < msgtype <= {table.max_number}:")
        with out.indent():
            out(f"return {array}[msgtype]")
        out("return 0")
    out("")


def _replies_and_cbflags(table: Table) -> Lines:
    out = Lines()
    out("cdef bytes _encode_reply(object value):")
    with out.indent():
        out("cdef int32_t v")
        out("if not -0x80000000 <= value <= 0x7fffffff:")
        with out.indent():
            out('raise OverflowError(f"reply {value!r} does not fit a C int")')
        out("v = value")
        out("return (<char *>&v)[:4]")
    out("")
    out("def encode_reply(value):")
    with out.indent():
        out('"""The 4-byte native int the helper reads as a reply."""')
        out("return _encode_reply(value)")
    out("")
    for direction in Direction:
        names = [m for m in table.in_direction(direction) if m.cbflag]
        pairs = ", ".join(f'("{m.name}", {1 << m.number})' for m in names)
        out(f"_CBFLAG_METHODS_{direction.name} = ({pairs},)")
    out("")
    out("def compute_cbflags(callbacks, int direction):")
    with out.indent():
        out('"""cbflags for the libxc callbacks an object has as callable attributes."""')
        out("cdef unsigned flags = 0")
        out("if callbacks is None:")
        with out.indent():
            out("return 0")
        out("methods = _CBFLAG_METHODS_SAVE if direction == DIR_SAVE else _CBFLAG_METHODS_RESTORE")
        out("for name, bit in methods:")
        with out.indent():
            out("if callable(getattr(callbacks, name, None)):")
            with out.indent():
                out("flags |= bit")
        out("return flags")
    return out


def emit(table: Table) -> List[GeneratedFile]:
    sections = [_prelude(table), _helpers()]
    sections += [_decoder(m) for m in table]
    sections += [_decode_body(table), _dispatch(table), _replies_and_cbflags(table)]
    return [GeneratedFile(PATH, join_sections(sections))]
