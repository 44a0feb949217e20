"""A C test program generated from the message model.

The program links the generated senders (helper_c/xensr_msgs.c).  It reads
commands from the file named by argv[1] (or, when started with another
command line, e.g. a helper's by the callout, by $DRIVER_SCRIPT), one per
line: ``<message name> <arg> ...`` with integers in decimal and STRINGs in
hex (``-`` for the empty string).  Each command calls that message's
sender: frames go to fd 1, replies are read from fd 0, and every reply a
sender returned is reported as ``reply <name> <value>`` on fd 2 (or
appended to the file $DRIVER_REPORT names).
"""

from __future__ import annotations

import os
import subprocess

from codegen.emit_c import sender_name
from codegen.model import Kind, Message, Table
from codegen.output import Lines

# The hand-written frame building (frame.c) the generated stubs include.
HELPER_C = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "helper_c")


def _parse_arg(i: int, arg) -> list:
    t = arg.type
    if t.kind is Kind.STRING:
        return [f"char *a{i} = unhex(tok[{i + 1}]);"]
    if t.signed:
        return [f"{t.c_type} a{i} = ({t.c_type})strtoll(tok[{i + 1}], NULL, 10);"]
    return [f"{t.c_type} a{i} = ({t.c_type})strtoull(tok[{i + 1}], NULL, 10);"]


def _command(msg: Message) -> Lines:
    out = Lines()
    out(f'if (!strcmp(tok[0], "{msg.name}")) {{')
    with out.indent():
        out(f"if (ntok != {len(msg.args) + 1}) {{")
        with out.indent():
            out(f'fprintf(stderr, "{msg.name}: wrong argument count\\n");', "exit(3);")
        out("}")
        for i, arg in enumerate(msg.args):
            out(*_parse_arg(i, arg))
        call = f"{sender_name(msg)}({', '.join(f'a{i}' for i in range(len(msg.args)))})"
        if msg.reply.waits:
            out(f"int r = {call};", f'fprintf(report, "reply {msg.name} %d\\n", r);')
        else:
            out(f"{call};")
        for i, arg in enumerate(msg.args):
            if arg.type.kind is Kind.STRING:
                out(f"free(a{i});")
        out("return;")
    out("}")
    return out


def source(table: Table) -> str:
    out = Lines()
    out('#include "xensr_msgs.h"', "#include <errno.h>", "#include <stdio.h>",
        "#include <stdlib.h>", "#include <string.h>", "#include <unistd.h>", "")
    out("void xensr_helper_transmit(const unsigned char *frame, size_t len)", "{")
    with out.indent():
        out("while (len) {")
        with out.indent():
            out("ssize_t r = write(1, frame, len);",
                "if (r < 0 && errno == EINTR) continue;",
                "if (r <= 0) exit(4);",
                "frame += r; len -= (size_t)r;")
        out("}")
    out("}", "")
    out("int xensr_helper_getreply(const char *name)", "{")
    with out.indent():
        out("int v; size_t got = 0;", "(void)name;",
            "while (got < sizeof(v)) {")
        with out.indent():
            out("ssize_t r = read(0, (char *)&v + got, sizeof(v) - got);",
                "if (r < 0 && errno == EINTR) continue;",
                "if (r <= 0) exit(5);", "got += (size_t)r;")
        out("}", "return v;")
    out("}", "")
    out("static FILE *report;", "")
    out("static char *unhex(const char *s)", "{")
    with out.indent():
        out('size_t n = strcmp(s, "-") ? strlen(s) / 2 : 0, i;',
            "char *o = malloc(n + 1);", "if (!o) exit(6);",
            "for (i = 0; i < n; i++) {")
        with out.indent():
            out("unsigned v;", 'sscanf(s + 2 * i, "%2x", &v);', "o[i] = (char)v;")
        out("}", "o[n] = 0;", "return o;")
    out("}", "")
    out("static void run(char **tok, int ntok)", "{")
    with out.indent():
        for msg in table:
            out.extend(_command(msg))
        out('fprintf(stderr, "unknown command %s\\n", tok[0]);', "exit(3);")
    out("}", "")
    out("int main(int argc, char **argv)", "{")
    with out.indent():
        out("static char line[1 << 20];", "FILE *f;",
            'const char *script = argc == 2 ? argv[1] : getenv("DRIVER_SCRIPT");',
            'const char *rep = getenv("DRIVER_REPORT");', "",
            'report = rep ? fopen(rep, "a") : stderr;',
            "if (!report) return 2;",
            "setvbuf(report, NULL, _IONBF, 0);",
            'if (!script || !(f = fopen(script, "r"))) return 2;',
            "while (fgets(line, sizeof(line), f)) {")
        with out.indent():
            out("char *tok[16];", "int ntok = 0;", "char *save = NULL, *t;", "",
                'for (t = strtok_r(line, " \\n", &save); t && ntok < 16;',
                '     t = strtok_r(NULL, " \\n", &save))')
            with out.indent():
                out("tok[ntok++] = t;")
            out("if (ntok) run(tok, ntok);")
        out("}", "fclose(f);", "return 0;")
    out("}")
    return out.text


def build(table: Table, tmpdir: str, c_source: str) -> str:
    """Compile the driver against the given generated C stubs; return its path."""
    from codegen import emit_c

    files = {g.path: g.text for g in emit_c.emit(table)}
    inc = os.path.join(tmpdir, "inc")
    os.makedirs(inc, exist_ok=True)
    with open(os.path.join(inc, "xensr_msgs.h"), "w") as f:
        f.write(files[emit_c.HEADER_PATH])
    stubs = os.path.join(tmpdir, "xensr_msgs.c")
    with open(stubs, "w") as f:
        f.write(c_source or files[emit_c.SOURCE_PATH])
    drv = os.path.join(tmpdir, "driver.c")
    with open(drv, "w") as f:
        f.write(source(table))
    exe = os.path.join(tmpdir, "driver")
    cflags = subprocess.run(["pkg-config", "--cflags", "xencontrol", "xenguest"],
                            check=True, capture_output=True, text=True).stdout.split()
    subprocess.run(["cc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    f"-I{inc}", f"-I{HELPER_C}", *cflags, stubs, drv, "-o", exe],
                   check=True)
    return exe
