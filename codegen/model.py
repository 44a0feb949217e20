"""The data model of the message table.

A :class:`Table` is a sequence of :class:`Message` objects, each with typed
:class:`Arg` arguments.  Emitters (``emit_c``, ``emit_cython``, ``emit_py``)
read only this model; nothing downstream looks at the table's source text.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple


class Kind(enum.Enum):
    INTEGER = "integer"
    STRING = "string"
    BLOCK = "block"


@dataclass(frozen=True)
class ArgType:
    """A wire type: how one argument is laid out in a frame body."""

    name: str  # as written in the table, e.g. "unsigned long"
    kind: Kind
    c_type: str  # C type of the parameter in the senders
    size: int = 0  # bytes on the wire for integers (x86-64 / arm64)
    signed: bool = False
    struct_code: str = ""  # Python struct code (native order, standard size)

    @property
    def minimum(self) -> int:
        return -(1 << (8 * self.size - 1)) if self.signed else 0

    @property
    def maximum(self) -> int:
        bits = 8 * self.size - (1 if self.signed else 0)
        return (1 << bits) - 1


def _int(name: str, c_type: str, size: int, signed: bool) -> ArgType:
    codes = {(2, False): "H", (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}
    return ArgType(name, Kind.INTEGER, c_type, size, signed, codes[(size, signed)])


#: Every type the table may use.  Widths are those of x86-64 and arm64
#: (PROTOCOL.md Part A item 5, B§5.2); the C emitter asserts them at
#: compile time with _Static_assert.
TYPES: Dict[str, ArgType] = {
    t.name: t
    for t in (
        _int("uint16_t", "uint16_t", 2, False),
        _int("uint32_t", "uint32_t", 4, False),
        _int("int", "int", 4, True),
        _int("unsigned", "unsigned", 4, False),
        _int("unsigned long", "unsigned long", 8, False),
        _int("long", "long", 8, True),
        _int("xen_pfn_t", "xen_pfn_t", 8, False),
        ArgType("STRING", Kind.STRING, "const char *"),
        ArgType("BLOCK", Kind.BLOCK, "const void *"),
    )
}


@dataclass(frozen=True)
class Arg:
    type: ArgType
    name: str


class Reply(enum.Enum):
    """Whether the helper waits for an int reply after sending."""

    NONE = "none"
    SYNC = "W"  # the parent's callback returns the reply
    ASYNC = "A"  # the parent may send the reply later

    @property
    def waits(self) -> bool:
        return self is not Reply.NONE


class Direction(enum.IntEnum):
    SAVE = 0
    RESTORE = 1


@dataclass(frozen=True)
class Message:
    number: int
    name: str
    save: bool  # flag s: valid in the save direction
    restore: bool  # flag r: valid in the restore direction
    callback: bool  # flag c: dispatched to the toolstack's callback object
    cbflag: bool  # flag x: a libxc callback; presence travels in cbflags
    reply: Reply
    args: Tuple[Arg, ...]
    #: For libxc callbacks that receive their arguments as one struct passed
    #: by value (precopy_policy): the struct tag; args are its fields.
    libxc_struct: Optional[str] = None
    #: Whether xensr added this message (not in Xen 4.17's table).
    extension: bool = False
    doc: str = ""

    @property
    def flags(self) -> str:
        out = ("s" if self.save else "") + ("r" if self.restore else "")
        out += ("c" if self.callback else "") + ("x" if self.cbflag else "")
        return out + ("" if self.reply is Reply.NONE else self.reply.value)

    @property
    def cbflag_bit(self) -> Optional[int]:
        return self.number if self.cbflag else None

    def valid_in(self, direction: Direction) -> bool:
        return self.save if direction is Direction.SAVE else self.restore

    @property
    def fixed_size(self) -> int:
        """Body bytes not counting string/block contents (incl. the type)."""
        size = 2
        for arg in self.args:
            size += arg.type.size if arg.type.kind is Kind.INTEGER else 4
        return size

    @property
    def string_args(self) -> Tuple[Arg, ...]:
        return tuple(a for a in self.args if a.type.kind is Kind.STRING)


@dataclass(frozen=True)
class Constant:
    name: str
    value: int
    doc: str = ""


@dataclass(frozen=True)
class ConstantGroup:
    """Named numbers that are part of the protocol (levels, reply values)."""

    name: str
    doc: str
    constants: Tuple[Constant, ...]


@dataclass(frozen=True)
class Table:
    messages: Tuple[Message, ...]
    groups: Tuple[ConstantGroup, ...] = field(default=())
    #: Largest frame body (the u16 length field); libxl requires < 64 KiB.
    frame_body_max: int = 0xFFFF

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def by_name(self, name: str) -> Message:
        for msg in self.messages:
            if msg.name == name:
                return msg
        raise KeyError(name)

    def in_direction(self, direction: Direction) -> Tuple[Message, ...]:
        return tuple(m for m in self.messages if m.valid_in(direction))

    @property
    def max_number(self) -> int:
        return max(m.number for m in self.messages)

    def canonical(self) -> str:
        """A stable text form of everything that affects the outputs."""
        doc = {
            "frame_body_max": self.frame_body_max,
            "messages": [
                {
                    "number": m.number,
                    "name": m.name,
                    "flags": m.flags,
                    "struct": m.libxc_struct,
                    "extension": m.extension,
                    "args": [[a.type.name, a.name] for a in m.args],
                }
                for m in self.messages
            ],
            "groups": [
                [g.name, [[c.name, c.value] for c in g.constants]] for g in self.groups
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


_FLAG_CHARS = set("srcxWA")


def message(
    number: int,
    flags: str,
    name: str,
    args: Sequence[Tuple[str, str]] = (),
    *,
    libxc_struct: Optional[str] = None,
    extension: bool = False,
    doc: str = "",
) -> Message:
    """Build a :class:`Message` from libxl-style flags, checking them."""
    bad = set(flags) - _FLAG_CHARS
    if bad:
        raise ValueError(f"message {name}: unknown flags {''.join(sorted(bad))}")
    if "W" in flags and "A" in flags:
        raise ValueError(f"message {name}: both W and A")
    if "s" not in flags and "r" not in flags:
        raise ValueError(f"message {name}: valid in no direction")
    if "x" in flags and "c" not in flags:
        raise ValueError(f"message {name}: x (libxc callback) requires c")
    reply = Reply.SYNC if "W" in flags else Reply.ASYNC if "A" in flags else Reply.NONE
    typed = []
    for type_name, arg_name in args:
        if type_name not in TYPES:
            raise ValueError(f"message {name}: unknown type {type_name!r}")
        typed.append(Arg(TYPES[type_name], arg_name))
    return Message(
        number=number,
        name=name,
        save="s" in flags,
        restore="r" in flags,
        callback="c" in flags,
        cbflag="x" in flags,
        reply=reply,
        args=tuple(typed),
        libxc_struct=libxc_struct,
        extension=extension,
        doc=doc,
    )


def build_table(entries, groups=(), frame_body_max=0xFFFF) -> Table:
    """Number the entries in order from 1, as libxl 4.17 does, and check."""
    messages = []
    seen = set()
    for number, entry in enumerate(entries, start=1):
        flags, name, args, extra = entry
        if name in seen:
            raise ValueError(f"duplicate message name {name}")
        seen.add(name)
        messages.append(message(number, flags, name, args, **extra))
    if len(messages) > 31:
        raise ValueError("cbflags is 32 bits wide: at most 31 messages")
    return Table(tuple(messages), tuple(groups), frame_body_max)
