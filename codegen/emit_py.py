"""Emitter: Python-visible constants (``xensr/_constants.py``)."""

from __future__ import annotations

from typing import List

from .model import Direction, Table
from .output import GeneratedFile, Lines, banner, join_sections

PATH = "xensr/_constants.py"


def _prelude(table: Table) -> Lines:
    out = Lines()
    out('"""Protocol constants of xensr\'s message table (generated)."""', "")
    out(*banner("#", table.digest, "xensr protocol constants."))
    out("", "from typing import NamedTuple, Tuple", "")
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
        out("")
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
            "extension: bool", "doc: str")
    out("", "", "MESSAGES: Tuple[MessageInfo, ...] = (")
    with out.indent():
        for m in table:
            args = "".join(f"({a.type.name!r}, {a.name!r}), " for a in m.args)
            out("MessageInfo(")
            with out.indent():
                out(f"{m.number}, {m.name!r}, {m.save}, {m.restore}, {m.callback}, {m.cbflag},")
                out(f"{m.reply.value!r}, ({args}), {m.extension},")
                out(f"{m.doc!r},")
            out("),")
    out(")", "")
    out("MESSAGES_BY_NAME = {m.name: m for m in MESSAGES}")
    out("MESSAGES_BY_NUMBER = {m.number: m for m in MESSAGES}")
    return out


def emit(table: Table) -> List[GeneratedFile]:
    sections = [_prelude(table), _numbers(table), _groups(table), _messages(table)]
    return [GeneratedFile(PATH, join_sections(sections))]
