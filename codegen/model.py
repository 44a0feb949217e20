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
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple


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
#: (docs/protocol.md §4.2); the C emitter asserts them at
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


class Role(enum.Enum):
    """What the parent does with a message (the callout's dispatch)."""

    LOG = "log"  # a xentoollog line: kept for the log tail, maybe logged
    PROGRESS = "progress"  # a progress report: the progress callback, no reply
    REQUEST = "request"  # a toolstack callback the helper waits for
    RESULTS = "results"  # data for the operation's result, no reply
    COMPLETE = "complete"  # the libxc call returned; the last frame read
    NOTICE = "notice"  # handed to the handler, nothing more


class ReplyMap(enum.Enum):
    """How a toolstack callback's return value becomes the int reply."""

    NONE = "none"  # no reply (or no callback)
    BOOL = "bool"  # bool -> 1/0; an int passes as is
    STATUS = "status"  # None/True -> 0 (done), False -> -1; an int as is
    ENUM = "enum"  # one of the values of a constant group (reply_group)


#: Roles whose messages a toolstack callback may receive.
CALLBACK_ROLES = (Role.PROGRESS, Role.REQUEST)


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
    role: Role = Role.NOTICE
    #: How the callback's return value becomes the reply (requests).
    reply_map: ReplyMap = ReplyMap.NONE
    #: For ReplyMap.ENUM: the constant group whose values are the replies.
    reply_group: Optional[str] = None
    #: The reply that makes libxenguest give up (sent once the operation
    #: is stopping, instead of asking the toolstack).
    failure_reply: Optional[int] = None
    #: The reply when the toolstack has no callback for the message.
    default_reply: Optional[int] = None
    #: Installed in cbflags in these directions whether or not the
    #: toolstack has a callback (as libxl does).
    always_save: bool = False
    always_restore: bool = False
    #: The Python class the callback receives the arguments in, as one
    #: object (a NamedTuple generated into _constants.py); None: the
    #: arguments are passed one by one.
    struct_class: Optional[str] = None
    #: Arguments the callback receives as bool (nonzero -> True).
    bool_args: Tuple[str, ...] = ()
    #: An argument that, when 0, makes the request undo an earlier one:
    #: it still reaches the toolstack while the operation stops.
    undo_arg: Optional[str] = None

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

    def always_in(self, direction: Direction) -> bool:
        return self.always_save if direction is Direction.SAVE else self.always_restore

    @property
    def is_callback(self) -> bool:
        """A toolstack callback may receive this message."""
        return self.role in CALLBACK_ROLES

    def arg_index(self, name: str) -> int:
        for i, arg in enumerate(self.args):
            if arg.name == name:
                return i
        raise KeyError(f"message {self.name} has no argument {name}")

    def offset_of(self, name: str) -> Optional[int]:
        """Body offset of an argument, None when a string or block comes
        before it (its offset then depends on their lengths)."""
        off = 2
        for arg in self.args:
            if arg.name == name:
                return off
            if arg.type.kind is not Kind.INTEGER:
                return None
            off += arg.type.size
        raise KeyError(f"message {self.name} has no argument {name}")

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
    #: A short lower-case name (xentoollog's level names).
    label: str = ""


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

    def group(self, name: str) -> ConstantGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def with_role(self, role: Role) -> Optional[Message]:
        """The message of a role the callout handles by itself, if any."""
        for msg in self.messages:
            if msg.role is role:
                return msg
        return None

    def callbacks_in(self, direction: Direction) -> Tuple[str, ...]:
        """Names of the toolstack callbacks of a direction: the requests
        in table order, then progress."""
        msgs = [m for m in self.in_direction(direction) if m.role is Role.REQUEST]
        msgs += [m for m in self.in_direction(direction) if m.role is Role.PROGRESS]
        return tuple(m.name for m in msgs)

    def always_cbflags(self, direction: Direction) -> Tuple[Message, ...]:
        return tuple(m for m in self.in_direction(direction) if m.always_in(direction))

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
                    "role": m.role.value,
                    "reply_map": m.reply_map.value,
                    "reply_group": m.reply_group,
                    "failure_reply": m.failure_reply,
                    "default_reply": m.default_reply,
                    "always": [m.always_save, m.always_restore],
                    "struct_class": m.struct_class,
                    "bool_args": list(m.bool_args),
                    "undo_arg": m.undo_arg,
                }
                for m in self.messages
            ],
            "groups": [
                [g.name, [[c.name, c.value, c.label] for c in g.constants]]
                for g in self.groups
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


_FLAG_CHARS = set("srcxWA")


def _check_flags(name: str, flags: str) -> None:
    bad = set(flags) - _FLAG_CHARS
    if bad:
        raise ValueError(f"message {name}: unknown flags {''.join(sorted(bad))}")
    if "W" in flags and "A" in flags:
        raise ValueError(f"message {name}: both W and A")
    if "s" not in flags and "r" not in flags:
        raise ValueError(f"message {name}: valid in no direction")
    if "x" in flags and "c" not in flags:
        raise ValueError(f"message {name}: x (libxc callback) requires c")


def _check_handling(msg: Message) -> None:
    """The columns that say how the parent handles a message agree."""
    where = f"message {msg.name}"
    if msg.role is Role.REQUEST:
        if not msg.reply.waits:
            raise ValueError(f"{where}: a request must have flag W or A")
        if msg.reply_map is ReplyMap.NONE or msg.failure_reply is None:
            raise ValueError(f"{where}: a request needs reply_map and failure_reply")
    elif msg.reply_map is not ReplyMap.NONE:
        raise ValueError(f"{where}: only requests have a reply_map")
    if (msg.reply_map is ReplyMap.ENUM) != (msg.reply_group is not None):
        raise ValueError(f"{where}: reply_group goes with reply_map 'enum'")
    if msg.reply.waits and msg.role is not Role.REQUEST and msg.default_reply is None:
        raise ValueError(f"{where}: a message waiting for a reply needs default_reply")
    if (msg.always_save and not msg.save) or (msg.always_restore and not msg.restore):
        raise ValueError(f"{where}: always installed in a direction it is not valid in")
    if (msg.always_save or msg.always_restore) and not msg.cbflag:
        raise ValueError(f"{where}: 'always' needs flag x")
    if ((msg.always_save or msg.always_restore) and msg.reply.waits
            and msg.default_reply is None):
        raise ValueError(f"{where}: always installed, so it needs default_reply")
    for name in msg.bool_args + ((msg.undo_arg,) if msg.undo_arg else ()):
        if msg.args[msg.arg_index(name)].type.kind is not Kind.INTEGER:
            raise ValueError(f"{where}: {name} must be an integer argument")
    if msg.struct_class and msg.bool_args:
        raise ValueError(f"{where}: struct_class and bool_args do not combine")
    if msg.role is Role.LOG and msg.offset_of("level") is None:
        raise ValueError(f"{where}: a log message needs 'level' before any string")


def message(
    number: int,
    flags: str,
    name: str,
    args: Sequence[Tuple[str, str]] = (),
    *,
    libxc_struct: Optional[str] = None,
    extension: bool = False,
    doc: str = "",
    role: Optional[str] = None,
    reply_map: str = "none",
    reply_group: Optional[str] = None,
    failure_reply: Optional[int] = None,
    default_reply: Optional[int] = None,
    always: str = "",
    struct_class: Optional[str] = None,
    bool_args: Sequence[str] = (),
    undo_arg: Optional[str] = None,
) -> Message:
    """Build a :class:`Message` from libxl-style flags and the parent's
    columns, checking them.  ``role`` defaults to "request" for a callback
    that waits for a reply, "results" for one that does not, else "notice";
    ``always`` is "s", "r" or "sr"."""
    _check_flags(name, flags)
    if set(always) - set("sr"):
        raise ValueError(f"message {name}: always must be made of s and r")
    reply = Reply.SYNC if "W" in flags else Reply.ASYNC if "A" in flags else Reply.NONE
    typed = []
    for type_name, arg_name in args:
        if type_name not in TYPES:
            raise ValueError(f"message {name}: unknown type {type_name!r}")
        typed.append(Arg(TYPES[type_name], arg_name))
    if role is None:
        role = ("notice" if "c" not in flags
                else "request" if reply.waits else "results")
    msg = Message(
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
        role=Role(role),
        reply_map=ReplyMap(reply_map),
        reply_group=reply_group,
        failure_reply=failure_reply,
        default_reply=default_reply,
        always_save="s" in always,
        always_restore="r" in always,
        struct_class=struct_class,
        bool_args=tuple(bool_args),
        undo_arg=undo_arg,
    )
    _check_handling(msg)
    return msg


def _resolve(value: Any, constants: Dict[str, int], where: str) -> Any:
    """A reply given as a constant's name -> its value."""
    if isinstance(value, str):
        if value not in constants:
            raise ValueError(f"{where}: unknown constant {value!r}")
        return constants[value]
    return value


def build_table(entries: Sequence[Any], groups: Sequence[ConstantGroup] = (),
                frame_body_max: int = 0xFFFF) -> Table:
    """Number the entries in order from 1, as libxl 4.17 does, and check."""
    constants = {c.name: c.value for g in groups for c in g.constants}
    group_names = {g.name for g in groups}
    messages = []
    seen = set()
    for number, entry in enumerate(entries, start=1):
        flags, name, args, extra = entry
        if name in seen:
            raise ValueError(f"duplicate message name {name}")
        seen.add(name)
        extra = dict(extra)
        for key in ("failure_reply", "default_reply"):
            if key in extra:
                extra[key] = _resolve(extra[key], constants, f"message {name}")
        if extra.get("reply_group") is not None and extra["reply_group"] not in group_names:
            raise ValueError(f"message {name}: unknown reply_group {extra['reply_group']!r}")
        messages.append(message(number, flags, name, args, **extra))
    if len(messages) > 31:
        raise ValueError("cbflags is 32 bits wide: at most 31 messages")
    for role in (Role.LOG, Role.PROGRESS, Role.COMPLETE):
        if sum(m.role is role for m in messages) > 1:
            raise ValueError(f"at most one message has role {role.value}")
    return Table(tuple(messages), tuple(groups), frame_body_max)
