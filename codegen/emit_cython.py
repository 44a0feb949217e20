"""Emitter: the callout's message tables and decoders (``xensr/_msgs.pxi``).

Included by ``xensr/_xc.pyx``; includes ``xensr/_wire.pxi`` (the fixed
wire-format readers, the reply encoder and ``decode_frame_body``).
Provides, all from the table:

* ``cdef enum``s of the message numbers (``MSG_<NAME>``, ``MSG_SLOTS``),
  the roles and reply mappings, and the layout facts the callout's fast
  paths use (the log level's offset, complete's argument positions);
* per-type C arrays with bounds-checked getters (``_role``,
  ``_reply_kind``, ``_reply_map``, ``_cbflag_bit``, the failure and
  default replies, the reply range, ...);
* ``_decode_body(body, n, direction)``: strict decoding of one frame body
  into ``(msgtype, args)``; every malformation raises its own
  :class:`~xensr.errors.ProtocolError` subclass naming the message and the
  byte offset; nothing is read past ``n``;
* ``_check_<name>(body, n)``: the same checks, without raising or decoding;
* ``_dispatch(handler, msgtype, args)``: calls ``handler.msg_<name>(*args)``;
* ``compute_cbflags(callbacks, direction)``: cbflags for an object's methods.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from .model import Arg, Direction, Kind, Message, Reply, ReplyMap, Role, Table
from .output import GeneratedFile, Lines, banner, join_sections

PATH = "xensr/_msgs.pxi"

_CTYPES = {
    "uint16_t": "uint16_t", "uint32_t": "uint32_t", "int": "int32_t",
    "unsigned": "uint32_t", "unsigned long": "uint64_t", "long": "int64_t",
    "xen_pfn_t": "uint64_t",
}

_REPLY_CODE = {Reply.NONE: 0, Reply.SYNC: 1, Reply.ASYNC: 2}


# Codes from 1: a per-type array holds 0 for numbers outside the table.
_ROLE_CODE = {role: i for i, role in enumerate(Role, start=1)}
_MAP_CODE = {kind: i for i, kind in enumerate(ReplyMap)}


def _prelude(table: Table) -> Lines:
    out = Lines()
    out(*banner("#", table.digest, "xensr callout message tables and decoders."))
    out("", f'TABLE_DIGEST = "{table.digest}"')
    out(f"FRAME_BODY_MAX = {table.frame_body_max}")
    out(f"DIR_SAVE = {int(Direction.SAVE)}", f"DIR_RESTORE = {int(Direction.RESTORE)}")
    names = ", ".join(f'"{m.name}"' for m in table)
    out(f"_NAMES = (None, {names})", "")
    out('include "_wire.pxi"')
    return out


def _enums(table: Table) -> Lines:
    out = Lines()
    out("# Message numbers: table order, from 1.", "cdef enum:")
    with out.indent():
        for msg in table:
            out(f"MSG_{msg.name.upper()} = {msg.number}")
        out(f"MSG_MAX = {table.max_number}")
        out("# Per-type arrays are indexed 0 (no message) to MSG_MAX.")
        out(f"MSG_SLOTS = {table.max_number + 1}")
    out("", "# What the parent does with a message (codegen.model.Role).", "cdef enum:")
    with out.indent():
        for role, code in _ROLE_CODE.items():
            out(f"ROLE_{role.name} = {code}")
    out("", "# How a callback's return becomes the reply (codegen.model.ReplyMap).",
        "cdef enum:")
    with out.indent():
        for kind, code in _MAP_CODE.items():
            out(f"MAP_{kind.name} = {code}")
    out("", "# Layout facts the callout's fast paths use.", "cdef enum:")
    with out.indent():
        out(*_layout(table))
    return out


def _layout(table: Table) -> List[str]:
    lines = [f"FRAME_SIZE_MAX = {2 + table.frame_body_max}  # u16 length + the largest body"]
    for group in table.groups:
        if any(c.label for c in group.constants):
            # Named values 0 to COUNT - 1 (xentoollog levels).
            lines.append(f"{group.name.upper()}_COUNT = {len(group.constants)}")
    log = table.with_role(Role.LOG)
    # -1: no such message in the table.
    level_off = log.offset_of("level") if log else None
    lines.append(f"LOG_LEVEL_OFFSET = {-1 if level_off is None else level_off}")
    complete = table.with_role(Role.COMPLETE)
    for field in ("retval", "errnoval"):
        index = complete.arg_index(field) if complete else -1
        lines.append(f"COMPLETE_ARG_{field.upper()} = {index}")
    return lines


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
            out("_too_short_for_type(n)")
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
        out("_unknown_type(msgtype)")
    return out


def _check(msg: Message) -> Lines:
    """_check_<name>: whether a body is a well-formed <name>, no decoding."""
    out = Lines()
    out(f"cdef inline bint _check_{msg.name}(const unsigned char *body, Py_ssize_t n) noexcept:")
    with out.indent():
        out("cdef Py_ssize_t off = 2")
        fixed = 0
        for arg in msg.args:
            if arg.type.kind is Kind.INTEGER:
                fixed += arg.type.size
                continue
            if fixed:
                out(f"if n - off < {fixed}:", "    return False", f"off += {fixed}")
                fixed = 0
            end = "_string_end" if arg.type.kind is Kind.STRING else "_block_end"
            out(f"off = {end}(body, n, off)", "if off < 0:", "    return False")
        out(f"return n - off == {fixed}")
    return out


def _check_body(table: Table) -> Lines:
    out = Lines()
    out("cdef bint _check_body(int msgtype, const unsigned char *body, Py_ssize_t n) noexcept:")
    with out.indent():
        out('"""Whether body is a well-formed message of type msgtype."""')
        for msg in table:
            out(f"if msgtype == {msg.number}:")
            with out.indent():
                out(f"return _check_{msg.name}(body, n)")
        out("return False")
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
    return out


def _arrays(table: Table) -> Lines:
    """Per-type C arrays: what the callout looks up for each frame."""
    out = Lines()
    arrays: List[Tuple[str, str, str, List[Any]]] = [
        ("int", "_reply_kind", "0: no reply, 1: synchronous (W), 2: asynchronous (A)",
         [_REPLY_CODE[m.reply] for m in table]),
        ("unsigned", "_cbflag_bit", "The cbflags bit of a libxc callback, else 0",
         [1 << m.number if m.cbflag else 0 for m in table]),
        ("int", "_role", "ROLE_*", [f"ROLE_{m.role.name}" for m in table]),
        ("int", "_reply_map", "MAP_*", [f"MAP_{m.reply_map.name}" for m in table]),
        ("int", "_failure_reply", "The reply that makes libxenguest give up",
         [m.failure_reply or 0 for m in table]),
        ("int", "_default_reply", "The reply when there is no callback",
         [m.default_reply or 0 for m in table]),
        ("bint", "_has_default", "Whether _default_reply applies",
         [int(m.default_reply is not None) for m in table]),
        ("int", "_reply_min", "The smallest reply a callback may give",
         [_reply_range(table, m)[0] for m in table]),
        ("int", "_reply_max", "The largest reply a callback may give",
         [_reply_range(table, m)[1] for m in table]),
        ("int", "_undo_arg", "Index of the argument that, when 0, makes an undo; -1",
         [m.arg_index(m.undo_arg) if m.undo_arg else -1 for m in table]),
        ("unsigned", "_bool_args", "Bit i: argument i reaches the callback as bool",
         [sum(1 << m.arg_index(a) for a in m.bool_args) for m in table]),
        ("unsigned", "_directions", "Bit d: valid in direction d",
         [(1 << Direction.SAVE if m.save else 0) | (1 << Direction.RESTORE if m.restore else 0)
          for m in table]),
        ("bint", "_struct_args", "The callback gets the arguments as one object",
         [int(m.struct_class is not None) for m in table]),
    ]
    for ctype, func, doc, values in arrays:
        _lookup(out, table, ctype, func, doc, values)
    out("def reply_kind(int msgtype):")
    with out.indent():
        out('"""0: no reply, 1: synchronous (W), 2: asynchronous (A)."""')
        out("return _reply_kind(msgtype)")
    out("")
    prefixes = ", ".join(f'"{_enum_prefix(table, m)}"' for m in table)
    out("# ENUM replies: the constants' common prefix, for messages.")
    out(f"_REPLY_ENUM_NAMES = (None, {prefixes})")
    return out


def _reply_range(table: Table, msg: Message) -> Tuple[int, int]:
    if msg.reply_map is ReplyMap.ENUM:
        assert msg.reply_group is not None
        values = sorted(c.value for c in table.group(msg.reply_group).constants)
        if values != list(range(values[0], values[-1] + 1)):
            raise ValueError(f"message {msg.name}: reply_group values must be contiguous")
        return values[0], values[-1]
    return -0x80000000, 0x7FFFFFFF


def _enum_prefix(table: Table, msg: Message) -> str:
    if msg.reply_group is None:
        return ""
    names = [c.name for c in table.group(msg.reply_group).constants]
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix + "*"


def _lookup(out: Lines, table: Table, ctype: str, func: str, doc: str,
            values: List[Any]) -> None:
    """A C array indexed by message number, and its bounds-checked getter
    (0 for numbers outside the table)."""
    size = table.max_number + 1
    array = f"_{func.strip('_').upper()}_BY_TYPE"
    out(f"cdef {ctype}[{size}] {array} = [0, {', '.join(map(str, values))}]", "")
    out(f"cdef inline {ctype} {func}(int msgtype) noexcept:")
    with out.indent():
        out(f'"""{doc} (0 outside the table)."""')
        out(f"if 0 < msgtype <= {table.max_number}:")
        with out.indent():
            out(f"return {array}[msgtype]")
        out("return 0")
    out("")


def _cbflags(table: Table) -> Lines:
    out = Lines()
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
    sections = [_prelude(table), _enums(table)]
    sections += [_decoder(m) for m in table]
    sections += [_decode_body(table)]
    sections += [_check(m) for m in table]
    sections += [_check_body(table), _dispatch(table), _arrays(table), _cbflags(table)]
    return [GeneratedFile(PATH, join_sections(sections))]
