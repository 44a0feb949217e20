"""Manual pages: made from the command line's parsers, so every option of
every subcommand is in its page, and the pages render."""

import argparse
import os
import shutil
import subprocess
import sys

import pytest

from xensr import _manpage
from xensr.cli import PROG, build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def roff(text):
    return text.replace("-", "\\-")


def test_one_page_per_subcommand_and_one_for_the_command():
    pages = _manpage.pages()
    subs = subparsers(build_parser())
    assert subs, "the command has no subcommands"
    assert sorted(pages) == sorted([f"{PROG}.1"] + [f"{PROG}-{name}.1" for name in subs])


def test_every_option_of_every_subcommand_is_in_its_page():
    pages = _manpage.pages()
    parser = build_parser()
    for name, sub in [(PROG, parser)] + [(f"{PROG}-{n}", p) for n, p in subparsers(parser).items()]:
        page = pages[f"{name}.1"]
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            for opt in action.option_strings:
                assert f"\\fB{roff(opt)}\\fR" in page, f"{opt} missing from {name}.1"
            if not action.option_strings:   # a positional, named as its usage names it
                shown = action.metavar if isinstance(action.metavar, str) else action.dest
                assert f"\\fI{roff(shown)}\\fR" in page, f"{shown} missing from {name}.1"
            if action.help:
                first = " ".join(action.help.split())[:20]
                if "%" not in first:
                    assert roff(first) in page, f"{name}.1 lacks the help of {action.dest}"


def test_the_main_page_lists_every_subcommand():
    page = _manpage.pages()[f"{PROG}.1"]
    for name in subparsers(build_parser()):
        assert f".TP\n\\fB{roff(name)}\\fR\n" in page


def test_subcommands_are_found_by_walking_the_parser():
    """A subcommand the generator has never heard of gets its page."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            extra = action.add_parser("frobnicate", help="a command added here")
            extra.add_argument("--with-care", metavar="HOW", help="how carefully")
    pages = _manpage.pages(parser)
    page = pages[f"{PROG}-frobnicate.1"]
    assert "\\fB\\-\\-with\\-care\\fR \\fIHOW\\fR" in page and "how carefully" in page
    assert f"\\fB{PROG}\\-frobnicate\\fR(1)" in pages[f"{PROG}.1"]


def test_date_is_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert '"2023-11-14"' in _manpage.pages()[f"{PROG}.1"].split("\n", 1)[0]


def test_written_pages_render_without_warnings(tmp_path):
    if shutil.which("man") is None:
        pytest.skip("man (man-db) is not installed")
    r = subprocess.run([sys.executable, "-m", "xensr._manpage", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    written = sorted(os.listdir(tmp_path))
    assert written == sorted(_manpage.pages())
    for name in written:
        out = subprocess.run(["man", "--warnings", "-l", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat"))
        assert out.returncode == 0 and out.stderr == "", (name, out.stderr)
        assert "NAME" in out.stdout and "SYNOPSIS" in out.stdout
