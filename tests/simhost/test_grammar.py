"""simhost/README.md is the one source of the fault grammar and of the state
directory format: every fault in its table, with every suffix and
optional argument it allows and sample values of each argument type, goes
to the C parser (simhost/fault.c, through driver.c's parse-fault) and to
the Python one (xensr.testing.parse_fault_spec); both must accept it, fill
in the documented defaults and agree on the result; malformed variants
must be refused by both.  The meta keys and files a save and a restore
leave must be those the README lists, and C and Python must read a meta
file alike."""

from __future__ import annotations

import errno
import itertools
import re
import signal
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import pytest

from tests.support.fixtures import ROOT
from tests.support.simhost import assert_completed, restore_from_file, save_to_file
from xensr.testing import parse_fault_spec

README = ROOT / "simhost" / "README.md"
ULONG_MAX = (1 << 64) - 1


def section(title: str) -> str:
    """The text of the README section (## or ###) headed TITLE."""
    text = README.read_text()
    m = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert m, f"no section {title!r} in {README}"
    return m.group(1)


def table(text: str, first_header: str) -> List[List[str]]:
    """Rows of the Markdown table whose first header cell is FIRST_HEADER."""
    rows: List[List[str]] = []
    inside = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            inside = True
        elif inside and line.startswith("|"):
            if not set(cells[0]) <= set("-: "):
                rows.append(cells)
        elif inside:
            break
    assert rows, f"no table headed {first_header!r}"
    return rows


def ticked(cell: str) -> List[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- the README's grammar ----------------------------------------------------

@dataclass
class Arg:
    word: str                  # "N", "ERRNO", ... or a literal such as "page"
    default: Optional[str]     # an optional argument's default


@dataclass
class FaultRow:
    name: str
    args: List[Arg]
    scopes: Tuple[Optional[str], ...]


def parse_syntax(syntax: str) -> Tuple[str, List[Arg]]:
    """`fail-at-page:N[:ERRNO=EIO]` -> ("fail-at-page", [N, ERRNO=EIO])."""
    m = re.fullmatch(r"([a-z-]+)((?::[A-Za-z]+)*)((?:\[:[A-Z]+=[A-Z0-9]+\])*)", syntax)
    assert m, f"unreadable fault syntax {syntax!r}"
    required = [Arg(w, None) for w in m.group(2).split(":")[1:]]
    optional = [Arg(w, d) for w, d in re.findall(r"\[:([A-Z]+)=([A-Z0-9]+)\]", m.group(3))]
    return m.group(1), required + optional


def readme_faults() -> List[FaultRow]:
    out = []
    for cells in table(section("Faults"), "Fault"):
        name, args = parse_syntax(ticked(cells[0])[0])
        scopes = (None,) + tuple(s.lstrip("@") for s in ticked(cells[1]))
        out.append(FaultRow(name, args, scopes))
    return out


def readme_types() -> Dict[str, str]:
    types = {}
    for cells in table(section("Faults"), "Argument"):
        for word in ticked(cells[0]):
            types[word] = cells[1]
    return types


def names_in(values: str) -> List[str]:
    return ticked(values.split("one of", 1)[1])


FAULTS = readme_faults()
TYPES = readme_types()


def good_values(word: str) -> List[str]:
    """Sample spellings of an argument: every listed name, the bounds."""
    if word not in TYPES:                          # a literal
        return [word]
    values = TYPES[word]
    samples = []
    bounds = re.search(r"(\d+) to (\d+)", values)
    if bounds:
        lo, hi = (int(x) for x in bounds.groups())
        samples += [str(lo), str(hi), str((lo + hi) // 2)]
    if "one of" in values:
        names = names_in(values)
        samples += names
        if "with or without SIG" in values:
            samples += ["SIG" + n for n in names]
    return samples


def bad_values(word: str) -> List[str]:
    if word not in TYPES:
        return [word + "x", word.upper()]
    values = TYPES[word]
    bounds = re.search(r"(\d+) to (\d+)", values)
    if bounds:
        lo, hi = (int(x) for x in bounds.groups())
        bad = [str(hi + 1), "x", "-1", "1.5", " 1", "+1", ""]
        bad += [str(lo - 1)] if lo > 0 else []
    else:
        bad = []
    if "one of" in values:
        bad += ["nowhere", names_in(values)[0].lower(), names_in(values)[0] + "X"]
    return bad


def variants(row: FaultRow) -> List[Tuple[str, Tuple[str, ...]]]:
    """(spec, the arguments as written) for each way of writing ROW."""
    required = [a for a in row.args if a.default is None]
    optional = [a for a in row.args if a.default is not None]
    out = []
    for k in range(len(optional) + 1):
        words = required + optional[:k]
        # Each argument takes each of its sample values once; the others
        # take their first, so the count stays linear.
        combos = {tuple(good_values(a.word)[0] for a in words)}
        for i, a in enumerate(words):
            for v in good_values(a.word):
                combo = [good_values(b.word)[0] for b in words]
                combo[i] = v
                combos.add(tuple(combo))
        for combo in sorted(combos):
            for scope in row.scopes:
                spec = ":".join((row.name,) + combo) + (f"@{scope}" if scope else "")
                out.append((spec, combo))
    return out


def as_number(word: str, text: str) -> str:
    """The normal form of one argument (errno values and signals as numbers)."""
    if text.isdigit() or word not in TYPES:
        return text
    if word == "ERRNO":
        return str(getattr(errno, text))
    if word == "SIGNAME":
        return str(int(signal.Signals["SIG" + text.removeprefix("SIG")]))
    return text                                    # POINT


def expected(row: FaultRow, combo: Tuple[str, ...], scope: Optional[str]) -> str:
    """What the README says the spec means, in normal form."""
    args = [as_number(a.word, v) for a, v in zip(row.args, combo)]
    args += [as_number(a.word, a.default) for a in row.args[len(combo):]]
    return ":".join([row.name, *args]) + (f"@{scope}" if scope else "")


# -- the two parsers -----------------------------------------------------------

def python_normal(spec: str) -> str:
    try:
        faults = parse_fault_spec(spec)
    except ValueError:
        return "rejected"
    return "parsed " + ",".join(
        ":".join([name, *map(str, args)]) + (f"@{scope}" if scope else "")
        for name, args, scope in faults)


def c_normal(driver, specs: List[str]) -> List[str]:
    p = subprocess.run([str(driver), "parse-fault", *specs], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == len(specs)
    return lines


def both_agree(driver, specs: List[str]) -> List[str]:
    c = c_normal(driver, specs)
    py = [python_normal(s) for s in specs]
    for spec, a, b in zip(specs, c, py):
        assert a == b, f"{spec!r}: C {a!r}, Python {b!r}"
    return c


# -- tests -------------------------------------------------------------------------

def test_readme_lists_every_fault_of_both_parsers():
    import xensr.testing as t
    names = [row.name for row in FAULTS]
    assert sorted(set(names)) == sorted(t._FAULTS)
    assert len(FAULTS) >= 10 and set(TYPES) >= {"N", "ERRNO", "SIGNAME", "POINT", "LEN"}
    assert names_in(TYPES["ERRNO"]) == list(t._ERRNO_NAMES)
    assert names_in(TYPES["SIGNAME"]) == list(t._SIGNAL_NAMES)
    assert names_in(TYPES["POINT"]) == list(t._HANG_POINTS)
    # ... and of the C table: each fault name appears as a row of faults[].
    c = (ROOT / "simhost" / "fault.c").read_text()
    assert sorted(set(re.findall(r'^    \{ "([a-z-]+)",\s+FAULT_', c, re.M))) == sorted(set(names))


@pytest.mark.parametrize("row", FAULTS, ids=lambda r: ":".join([r.name] + [a.word for a in r.args]))
def test_every_documented_form_parses_alike(driver, row):
    cases = variants(row)
    got = both_agree(driver, [spec for spec, _ in cases])
    for (spec, combo), line in zip(cases, got):
        scope = spec.rpartition("@")[2] if "@" in spec else None
        assert line == "parsed " + expected(row, combo, scope), spec


@pytest.mark.parametrize("row", FAULTS, ids=lambda r: ":".join([r.name] + [a.word for a in r.args]))
def test_malformed_forms_are_refused_by_both(driver, row):
    first = [good_values(a.word)[0] for a in row.args if a.default is None]
    full = [good_values(a.word)[0] for a in row.args]
    bad = [":".join([row.name, *full, "1"])]                 # one argument too many
    if first:
        bad.append(":".join([row.name, *first[:-1]]))        # one too few
    for i, a in enumerate(row.args):
        for v in bad_values(a.word):
            args = list(full)
            args[i] = v
            bad.append(":".join([row.name, *args]))
    for scope in {"save", "restore"} - set(row.scopes):
        bad.append(":".join([row.name, *full]) + f"@{scope}")
    bad += [":".join([row.name, *full]) + s for s in ("@both", "@", "@save@save")]
    bad += [row.name.upper(), row.name + "s", "x" + row.name]
    # Forms another row of the same name accepts are not malformed.
    good = {spec for other in FAULTS if other.name == row.name for spec, _ in variants(other)}
    bad = [spec for spec in bad if spec not in good]
    assert bad
    assert both_agree(driver, bad) == ["rejected"] * len(bad)


def test_lists_of_faults(driver):
    """Empty items are skipped; at most 16 faults; one bad item refuses all."""
    specs = ["", ",", "stall:1,,exit-early@save,", ",".join(["stall:1"] * 16),
             ",".join(["stall:1"] * 17), "stall:1,bogus", "exit-early,open-fail:EIO"]
    got = both_agree(driver, specs)
    assert got == ["parsed ", "parsed ", "parsed stall:1,exit-early@save",
                   "parsed " + ",".join(["stall:1"] * 16), "rejected", "rejected",
                   "parsed exit-early,open-fail:5"]


def test_state_directory_is_as_documented(debian_helper, simulated_host, tmp_path):
    """The meta keys and files that creating, saving (live, PV and HVM) and
    restoring leave are exactly those the README lists."""
    host = simulated_host
    documented_keys = {ticked(cells[0])[0] for cells in table(section("State directory"), "Key")}
    documented_files = {ticked(cells[0])[0]
                        for cells in table(section("State directory"), "Path")}
    keys, files = set(), set()
    for kind in ("pv", "hvm"):
        dom = host.create_domain(2, kind=kind, name=f"guest-{kind}")
        t, _ = save_to_file(debian_helper, host, dom, tmp_path / kind, live=True)
        assert_completed(t)
        if kind == "pv":
            target = host.create_empty_domain()
        else:   # a migration's target, made from the guest's configuration
            target = host.create_incoming(host.domain_config(dom), "guest-hvm--incoming")
        assert_completed(restore_from_file(debian_helper, host, target, tmp_path / kind))
        for d in (dom, target):
            keys |= set(host.read_meta(d))
            files |= {f"dom<N>/{p.name}" for p in (host.state_dir / f"dom{d}").iterdir()}
    assert keys == documented_keys
    assert files == {f for f in documented_files if f.startswith("dom<N>/")
                     and "<pid>" not in f}


def test_meta_lines_read_alike(driver, simulated_host, tmp_path):
    """C and Python read a hand-edited meta file alike: lines without "="
    or with an empty key are ignored, a value may hold "=", the last of two
    equal keys wins, unknown keys survive C's rewrite."""
    host = simulated_host
    dom = host.create_domain(1, kind="pv", dirty_pages=0)
    meta = host.state_dir / f"dom{dom}" / "meta"
    odd = "no equals sign\n=empty key\nnote=a=b\nseed=1\nseed=7\ncustom=\n"
    meta.write_text(meta.read_text() + odd)
    before = host.read_meta(dom)
    assert (before["note"], before["seed"], before["custom"]) == ("a=b", "7", "")
    p = subprocess.run([str(driver), "save", str(dom), "0", str(tmp_path / "s"), "none"],
                       env=host.env, capture_output=True, text=True, timeout=60)
    assert "rc 0 errno 0" in p.stdout.splitlines(), p.stdout + p.stderr
    after = host.read_meta(dom)
    new = {"save_pages", "save_iterations", "save_result"}
    assert {k: v for k, v in after.items() if k not in new | {"state"}} == \
        {k: v for k, v in before.items() if k != "state"}
    assert after["state"] == "suspended" and after["save_result"] == "ok"
    assert "no equals sign" not in meta.read_text() and meta.read_text().count("seed=") == 1
