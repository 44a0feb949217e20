"""Emitter: Python-visible constants (``xensr/_constants.py``).

Message numbers and cbflags bits, the constant groups (with their names
where the table gives labels), the classes struct-presented callbacks
receive, and the maps the Python API reads: the callback names per
direction, the cbflags always installed, each request's reply mapping,
failure and default replies, and one :class:`MessageInfo` per message.
"""

from __future__ import annotations

from typing import List

from .model import Direction, Kind, ReplyMap, Table
from .output import GeneratedFile, Lines, banner, join_sections

PATH = "xensr/_constants.py"


def _prelude(table: Table) -> Lines:
    out = Lines()
    out('"""Protocol constants of xensr\'s message table (generated)."""', "")
    out(*banner("#", table.digest, "xensr protocol constants."))
    out("", "from typing import Dict, NamedTuple, Tuple", "")
    out(f'TABLE_DIGEST = "{table.digest}"')
    out(f"FRAME_BODY_MAX = {table.frame_body_max}")
    out(f"MSG_MAX = {table.max_number}")
    out(f"DIR_SAVE = {int(Direction.SAVE)}", f"DIR_RESTORE = {int(Direction.RESTORE)}")
    return out


def _numbers(table: Table) -> Lines:
    out = Lines()
    out("# Message numbers.")
    for msg in table:
        out(f"MSG_{msg.name.upper()} = {msg.number}")
    out("", "# cbflags bits (1 << message number) of the libxc callbacks.")
    for msg in table:
        if msg.cbflag:
            out(f"CBFLAG_{msg.name.upper()} = 1 << {msg.number}")
    return out


def _groups(table: Table) -> Lines:
    out = Lines()
    for group in table.groups:
        out(f"# {group.doc}")
        for const in group.constants:
            out(f"{const.name} = {const.value}")
        if any(c.label for c in group.constants):
            ordered = sorted(group.constants, key=lambda c: c.value)
            if [c.value for c in ordered] != list(range(len(ordered))):
                raise ValueError(f"group {group.name}: labelled values must be 0 to N-1")
            labels = "".join(f"{c.label!r}, " for c in ordered)
            out(f"{group.name.upper()}_NAMES: Tuple[str, ...] = ({labels})")
            out(f"{group.name.upper()}_COUNT = {len(ordered)}")
        out("")
    return out


_PY_TYPES = {Kind.INTEGER: "int", Kind.STRING: "str", Kind.BLOCK: "bytes"}


def _structs(table: Table) -> Lines:
    """The classes callbacks with struct_class receive their arguments in."""
    out = Lines()
    for msg in table:
        if msg.struct_class is None:
            continue
        what = f"struct {msg.libxc_struct}" if msg.libxc_struct else f"{msg.name}'s arguments"
        out(f"class {msg.struct_class}(NamedTuple):")
        with out.indent():
            out(f'"""libxenguest\'s ``{what}`` ({msg.name})."""', "")
            for arg in msg.args:
                out(f"{arg.name}: {_PY_TYPES[arg.type.kind]}")
        out("")
    return out


def _maps(table: Table) -> Lines:
    out = Lines()
    out("# The toolstack callbacks of each direction (requests, then progress).")
    for d in Direction:
        names = "".join(f"{n!r}, " for n in table.callbacks_in(d))
        out(f"CALLBACKS_{d.name}: Tuple[str, ...] = ({names})")
    out("", "# cbflags set whether or not the toolstack has the callback (as libxl).")
    for d in Direction:
        bits = " | ".join(f"CBFLAG_{m.name.upper()}" for m in table.always_cbflags(d)) or "0"
        out(f"ALWAYS_CBFLAGS_{d.name} = {bits}")
    out("ALWAYS_CBFLAGS = (" + ", ".join(f"ALWAYS_CBFLAGS_{d.name}" for d in Direction) + ")")
    out("", "# How a request's callback return becomes its reply (see codegen/table.py).")
    out("REPLY_MAP: Dict[str, str] = {")
    with out.indent():
        for m in table:
            if m.reply_map is not ReplyMap.NONE:
                out(f"{m.name!r}: {m.reply_map.value!r},")
    out("}")
    out("# The reply that makes libxenguest give up, once the operation stops.")
    out("FAILURE_REPLY: Dict[str, int] = {")
    with out.indent():
        for m in table:
            if m.failure_reply is not None:
                out(f"{m.name!r}: {m.failure_reply},")
    out("}")
    out("# The reply when the toolstack has no callback for the message.")
    out("DEFAULT_REPLY: Dict[str, int] = {")
    with out.indent():
        for m in table:
            if m.default_reply is not None:
                out(f"{m.name!r}: {m.default_reply},")
    out("}")
    out("# The class a struct-presented callback receives its arguments in.")
    out("STRUCT_CLASSES: Dict[str, type] = {")
    with out.indent():
        for m in table:
            if m.struct_class is not None:
                out(f"{m.name!r}: {m.struct_class},")
    out("}")
    return out


def _messages(table: Table) -> Lines:
    out = Lines()
    out("class MessageInfo(NamedTuple):")
    with out.indent():
        out('"""One row of the message table."""', "")
        out("number: int", "name: str", "save: bool", "restore: bool",
            "callback: bool", "cbflag: bool",
            'reply: str  # "none", "W" (synchronous) or "A" (asynchronous)',
            "args: Tuple[Tuple[str, str], ...]  # (wire type, name)",
            "extension: bool", "doc: str",
            'role: str  # "log", "progress", "request", "results", "complete", "notice"',
            'reply_map: str  # "none", "bool", "status" or "enum"')
    out("", "", "MESSAGES: Tuple[MessageInfo, ...] = (")
    with out.indent():
        for m in table:
            args = "".join(f"({a.type.name!r}, {a.name!r}), " for a in m.args)
            out("MessageInfo(")
            with out.indent():
                out(f"{m.number}, {m.name!r}, {m.save}, {m.restore}, {m.callback}, {m.cbflag},")
                out(f"{m.reply.value!r}, ({args}), {m.extension},")
                out(f"{m.doc!r}, {m.role.value!r}, {m.reply_map.value!r},")
            out("),")
    out(")", "")
    out("MESSAGES_BY_NAME = {m.name: m for m in MESSAGES}")
    out("MESSAGES_BY_NUMBER = {m.number: m for m in MESSAGES}")
    return out


def emit(table: Table) -> List[GeneratedFile]:
    sections = [_prelude(table), _numbers(table), _groups(table), _structs(table),
                _maps(table), _messages(table)]
    return [GeneratedFile(PATH, join_sections(sections))]
