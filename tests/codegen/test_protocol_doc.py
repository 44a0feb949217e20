"""docs/protocol.md agrees with the message table, and every citation of it
names a section that exists.

The document's tables of messages (§5.2), wire types (§4.2) and cbflags
(§5.3), and every constant it writes as `` `NAME` (value) ``, are compared
with codegen's table, so a change to the table that the document does not
follow fails here.
"""

from __future__ import annotations

import os
import re
import struct
from typing import Dict, List, Tuple

import pytest

from codegen.model import TYPES, Kind
from codegen.table import TABLE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "protocol.md")

HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? (.+)$")
CONSTANT = re.compile(r"`([A-Z][A-Z0-9_]*)` \((-?(?:0x[0-9A-Fa-f]+|\d+))\)")


def read_doc() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def sections(text: str) -> Dict[str, str]:
    """Section number -> its text (up to the next heading of any level)."""
    out: Dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = HEADING.match(line)
        if m:
            current = m.group(2)
            assert current not in out, f"section {current} appears twice"
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def table_rows(section_text: str, first_cell: str) -> List[List[str]]:
    """The rows of the markdown table whose header starts with first_cell."""
    rows: List[List[str]] = []
    inside = False
    for line in section_text.splitlines():
        if not line.startswith("|"):
            if inside:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not inside:
            inside = cells[0] == first_cell
            continue
        if set(cells[0]) <= {"-"}:
            continue
        rows.append(cells)
    assert rows, f"no table starting with column {first_cell!r}"
    return rows


def parse_args(cell: str) -> List[Tuple[str, str]]:
    """"`uint32_t level`, `STRING context`" -> [(type, name), ...]."""
    out = []
    for item in re.findall(r"`([^`]+)`", cell):
        wire_type, _, name = item.rpartition(" ")
        out.append((wire_type, name))
    return out


@pytest.fixture(scope="module")
def doc():
    return read_doc()


@pytest.fixture(scope="module")
def secs(doc):
    return sections(doc)


def test_sections_are_numbered_in_order(doc):
    numbers = [HEADING.match(l).group(2) for l in doc.splitlines() if HEADING.match(l)]
    tops = [int(n) for n in numbers if "." not in n]
    assert tops == list(range(1, len(tops) + 1))
    for n in numbers:
        if "." in n:
            top, sub = n.split(".")
            subs = [m for m in numbers if m.startswith(top + ".")]
            assert subs == [f"{top}.{i}" for i in range(1, len(subs) + 1)], top


def test_message_table_matches_codegen(secs):
    rows = table_rows(secs["5.2"], "#")
    assert len(rows) == len(TABLE.messages), "one row per message of the table"
    for row, msg in zip(rows, TABLE.messages):
        number, name, flags, args, fixed, reply, origin = row
        assert int(number) == msg.number and name == msg.name, row
        assert flags.strip("`") == msg.flags, row
        assert parse_args(args) == [(a.type.name, a.name) for a in msg.args], row
        assert int(fixed) == msg.fixed_size, row
        assert reply == msg.reply.value, row
        assert origin == ("xensr" if msg.extension else "Xen 4.17"), row


def test_wire_types_match_codegen(secs):
    rows = table_rows(secs["4.2"], "wire type")
    documented = {row[0].strip("`"): row for row in rows}
    assert set(documented) == set(TYPES)
    for name, t in TYPES.items():
        row = documented[name]
        if t.kind is Kind.INTEGER:
            assert int(row[1]) == t.size, row
            assert row[2] == ("yes" if t.signed else "no"), row
        else:
            assert row[1] == "4 + N", row


def test_cbflags_table_matches_codegen(secs):
    rows = table_rows(secs["5.3"], "bit")
    documented = {row[2]: row for row in rows}
    with_bits = [m for m in TABLE if m.cbflag]
    assert list(documented) == [m.name for m in with_bits]
    for msg in with_bits:
        bit, value, _, save, restore = documented[msg.name]
        assert int(bit) == msg.cbflag_bit
        assert int(value, 16) == 1 << msg.cbflag_bit
        assert save == ("yes" if msg.save else "no")
        assert restore == ("yes" if msg.restore else "no")


def test_libxl_cbflags_values_add_up(secs):
    rows = table_rows(secs["5.3"], "operation")
    assert len(rows) == 6
    for operation, callbacks, value in rows:
        names = [n.strip() for n in callbacks.split(",")]
        direction = "save" if operation.endswith("save") else "restore"
        for n in names:
            msg = TABLE.by_name(n)
            assert msg.cbflag and getattr(msg, direction), (operation, n)
        assert sum(1 << TABLE.by_name(n).cbflag_bit for n in names) == int(value), operation


def test_every_constant_matches_codegen(doc):
    known = {c.name: c.value for g in TABLE.groups for c in g.constants}
    written = CONSTANT.findall(doc)
    assert written
    for name, value in written:
        assert name in known, f"docs/protocol.md writes `{name}` ({value}): not in the table"
        assert int(value, 0) == known[name], f"`{name}` ({value}) but the table says {known[name]}"
    mentioned = {name for name, _ in written}
    missing = sorted(set(known) - mentioned)
    assert not missing, f"docs/protocol.md does not give these table constants: {missing}"


def test_frame_body_limit(secs):
    assert f"the largest body is {TABLE.frame_body_max} bytes" in " ".join(secs["4.1"].split())


def test_complete_example_encodes_as_the_table_says(secs):
    msg = TABLE.by_name("complete")
    codes = "".join(a.type.struct_code for a in msg.args)
    body = struct.pack("=H" + codes, msg.number, *([0] * len(msg.args)))
    frame = struct.pack("=H", len(body)) + body
    blocks = re.findall(r"```\n(.*?)```", secs["11"], re.S)
    assert frame.hex(" ") in [b.strip() for b in blocks]


def _citations(text: str) -> List[str]:
    """Section numbers cited after "docs/protocol.md" in text."""
    out = []
    for m in re.finditer(r"docs/protocol\.md((?:(?:\s*(?:,|and|to|-)\s*|\s+)§\d+(?:\.\d+)?)+)",
                         text):
        out += re.findall(r"§(\d+(?:\.\d+)?)", m.group(1))
    return out


def _repository_texts():
    skip = {".git", ".venv", ".cache", "build", "dist", "__pycache__"}
    exts = (".py", ".pyx", ".pxd", ".pxi", ".pyi", ".c", ".h", ".md", ".txt", ".toml",
            ".cfg", ".in", ".golden", ".sh", ".map")
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        for f in files:
            if f.endswith(exts):
                path = os.path.join(top, f)
                with open(path, encoding="utf-8", errors="replace") as fh:
                    yield os.path.relpath(path, ROOT), fh.read()


def test_citations_name_existing_sections(secs, doc):
    assert _citations("see docs/protocol.md §10.1, §10.2 and §3") == ["10.1", "10.2", "3"]
    bad = []
    for path, text in _repository_texts():
        for n in _citations(text):
            if n not in secs:
                bad.append(f"{path}: §{n}")
    # Inside the document, plain "§N" refers to its own sections.
    for n in re.findall(r"§(\d+(?:\.\d+)?)", doc):
        if n not in secs:
            bad.append(f"docs/protocol.md: §{n}")
    assert not bad, "citations of sections docs/protocol.md does not have: " + ", ".join(bad)


def test_no_reference_leads_outside_the_repository():
    """Code, tests and docs cite the project's own docs/protocol.md: a
    citation of a protocol document kept outside the tree (its name, its
    part-and-section numbers, a path beside the checkout) fails here."""
    outside = re.compile(r"PROTOCOL\.md|\bB§\d|Part [AB] item \d|\.\./shared/")
    bad = []
    for path, text in _repository_texts():
        for lineno, line in enumerate(text.splitlines(), 1):
            if outside.search(line):
                bad.append(f"{path}:{lineno}: {line.strip()}")
    assert not bad, "references outside the repository:\n" + "\n".join(bad)
