"""Emitter: the C stubs of the helper (``helper_c/xensr_msgs.[ch]``).

One sender per message the helper sends, the reply read for W/A messages,
one libxc-signature stub per x message, and the functions that install the
stubs whose cbflags bits are set.  The fixed frame building (the frame
buffer, put, put_string, fit, transmit) is ``helper_c/frame.c``, which the
generated source includes.  The program linking the stubs supplies
``xensr_helper_transmit`` and ``xensr_helper_getreply``.
"""

from __future__ import annotations

from typing import List

from .model import Direction, Kind, Message, Table
from .output import GeneratedFile, Lines, banner, join_sections

HEADER_PATH = "helper_c/xensr_msgs.h"
SOURCE_PATH = "helper_c/xensr_msgs.c"


def macro(msg: Message, prefix: str) -> str:
    return f"XENSR_{prefix}_{msg.name.upper()}"


def sender_name(msg: Message) -> str:
    return f"xensr_send_{msg.name}"


def sender_return(msg: Message) -> str:
    return "int" if msg.reply.waits else "void"


def sender_params(msg: Message) -> str:
    params = []
    for a in msg.args:
        if a.type.kind is Kind.STRING:
            params.append(f"const char *{a.name}")
        elif a.type.kind is Kind.BLOCK:
            params += [f"const void *{a.name}", f"uint32_t {a.name}_len"]
        else:
            params.append(f"{a.type.c_type} {a.name}")
    return ", ".join(params) if params else "void"


def sender_prototype(msg: Message) -> str:
    return f"{sender_return(msg)} {sender_name(msg)}({sender_params(msg)})"


def stub_params(msg: Message) -> str:
    if msg.libxc_struct:
        return f"struct {msg.libxc_struct} stats, void *data"
    params = [f"{a.type.c_type} {a.name}" for a in msg.args]
    return ", ".join(params + ["void *data"])


def stub_call_args(msg: Message) -> str:
    if msg.libxc_struct:
        return ", ".join(f"stats.{a.name}" for a in msg.args)
    return ", ".join(a.name for a in msg.args)


def _header(table: Table) -> str:
    top = Lines()
    top(*banner("/*", table.digest, "xensr helper message stubs (header).", "*/"))
    top("#ifndef XENSR_MSGS_H", "#define XENSR_MSGS_H", "")
    top("#include <stddef.h>", "#include <stdint.h>")
    top("#include <xenctrl.h>", "#include <xenguest.h>", "")
    top(f'#define XENSR_TABLE_DIGEST "{table.digest}"')
    top(f"#define XENSR_FRAME_BODY_MAX {table.frame_body_max}u")
    top(f"#define XENSR_MSG_MAX {table.max_number}")

    numbers = Lines()
    numbers("/* Message numbers: table order, from 1. */", "enum xensr_msg {")
    with numbers.indent():
        for msg in table:
            numbers(f"{macro(msg, 'MSG')} = {msg.number},")
    numbers("};", "")
    numbers("/* cbflags bits: (1u << message number) for each libxc callback. */")
    for msg in table:
        if msg.cbflag:
            numbers(f"#define {macro(msg, 'CBFLAG')} (1u << {msg.number})")

    supplied = Lines()
    supplied(
        "/*",
        " * Supplied by the program that links these stubs:",
        " * transmit writes one whole frame (length prefix included) to the",
        " * parent; getreply waits for the parent's int reply to message NAME.",
        " * Neither returns on failure.",
        " */",
        "void xensr_helper_transmit(const unsigned char *frame, size_t len);",
        "int xensr_helper_getreply(const char *name);",
    )

    senders = Lines()
    senders("/*",
            " * Senders, one per message.  Those of W and A messages return the",
            " * parent's reply.  STRING arguments may be NULL (sent as \"\") and are",
            " * truncated, last first, so that the frame always fits.",
            " */")
    for msg in table:
        senders(sender_prototype(msg) + ";")

    install = Lines()
    install("/* Install forwarding stubs for the callbacks whose cbflags bit is set. */")
    install("void xensr_setcallbacks_save(struct save_callbacks *cb, unsigned cbflags);")
    install("void xensr_setcallbacks_restore(struct restore_callbacks *cb, unsigned cbflags);")
    install("", "#endif /* XENSR_MSGS_H */")
    return join_sections([top, numbers, supplied, senders, install])


def _source_prelude(table: Table) -> Lines:
    out = Lines()
    out(*banner("/*", table.digest, "xensr helper message stubs (source).", "*/"))
    out('#include "xensr_msgs.h"', "", "#include <string.h>", "")
    out("/* Native widths the wire format assumes (docs/protocol.md §4.2). */")
    seen = set()
    for msg in table:
        for arg in msg.args:
            t = arg.type
            if t.kind is Kind.INTEGER and t.name not in seen:
                seen.add(t.name)
                out(f'_Static_assert(sizeof({t.c_type}) == {t.size}, '
                    f'"{t.c_type} must be {t.size} bytes on the wire");')
    out("", "/* The frame buffer and put, put_string, fit, transmit. */",
        '#include "frame.c"')
    return out


def _sender(msg: Message) -> Lines:
    out = Lines()
    strings = msg.string_args
    out(sender_prototype(msg), "{")
    with out.indent():
        out("unsigned char *p = frame + 2;",
            f"uint16_t type = {macro(msg, 'MSG')};")
        if strings:
            out(f"size_t lens[{len(strings)}];")
        out("")
        for i, arg in enumerate(strings):
            out(f'if (!{arg.name})')
            with out.indent():
                out(f'{arg.name} = "";')
            out(f"lens[{i}] = strlen({arg.name});")
        if strings:
            out(f"fit({msg.fixed_size}, lens, {len(strings)});")
        out("p = put(p, &type, sizeof(type));")
        si = 0
        for arg in msg.args:
            if arg.type.kind is Kind.INTEGER:
                out(f"p = put(p, &{arg.name}, sizeof({arg.name}));")
            elif arg.type.kind is Kind.STRING:
                out(f"p = put_string(p, {arg.name}, lens[{si}]);")
                si += 1
            else:
                raise NotImplementedError(
                    f"{msg.name}.{arg.name}: the helper sends no BLOCK; give "
                    "the emitter a length bound before adding one")
        out("transmit(p);")
        if msg.reply.waits:
            out(f'return xensr_helper_getreply("{msg.name}");')
    out("}")
    return out


def _stub(msg: Message) -> Lines:
    out = Lines()
    ret = sender_return(msg)
    out(f"static {ret} stub_{msg.name}({stub_params(msg)})", "{")
    with out.indent():
        out("(void)data;")
        call = f"{sender_name(msg)}({stub_call_args(msg)});"
        out(("return " if ret == "int" else "") + call)
    out("}")
    return out


def _setcallbacks(table: Table, direction: Direction) -> Lines:
    which = "save" if direction is Direction.SAVE else "restore"
    out = Lines()
    out(f"void xensr_setcallbacks_{which}(struct {which}_callbacks *cb, unsigned cbflags)",
        "{")
    with out.indent():
        for msg in table.in_direction(direction):
            if msg.cbflag:
                out(f"if (cbflags & {macro(msg, 'CBFLAG')})")
                with out.indent():
                    out(f"cb->{msg.name} = stub_{msg.name};")
    out("}")
    return out


def _source(table: Table) -> str:
    sections: List[Lines] = [_source_prelude(table)]
    sections += [_sender(msg) for msg in table]
    sections += [_stub(msg) for msg in table if msg.cbflag]
    sections += [_setcallbacks(table, d) for d in Direction]
    return join_sections(sections)


def emit(table: Table) -> List[GeneratedFile]:
    return [GeneratedFile(HEADER_PATH, _header(table)),
            GeneratedFile(SOURCE_PATH, _source(table))]
