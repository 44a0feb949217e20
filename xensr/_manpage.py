"""Manual pages (roff, section 1) made from the command line's own parsers.

``python -m xensr._manpage OUTDIR`` writes ``xensr.1`` and one
``xensr-COMMAND.1`` per subcommand, walking whatever subparsers
:func:`xensr.cli.build_parser` registers: the options are never written a
second time.  The date is ``SOURCE_DATE_EPOCH`` when set (reproducible
builds), else today; nothing else depends on the build.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from . import __version__
from .cli import PROG, build_parser

SECTION = "1"


def _escape(text: str) -> str:
    """Text safe in a roff line: backslashes and hyphens escaped, no line
    starting with a control character."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in out.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _fill(text: Optional[str]) -> str:
    """argparse help text (one paragraph, %(default)s-style already
    expanded by the caller) as one roff text line."""
    return _escape(" ".join((text or "").split()))


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        when = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
    else:
        when = datetime.datetime.now(tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%d")


def _subcommands(parser: argparse.ArgumentParser) -> List[Tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the parser's order."""
    found: List[Tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps: Dict[str, str] = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def _help_of(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%" in text:
        params = dict(vars(action), prog=parser.prog)
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        try:
            text = text % params
        except (KeyError, TypeError, ValueError):
            pass
    return text


def _metavar(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    default = action.dest.upper() if action.option_strings else action.dest
    # argparse's own rendering of the value(s) an option takes.
    return formatter._format_args(action, default)


def _options(parser: argparse.ArgumentParser) -> Tuple[List[str], List[str]]:
    """The OPTIONS and ARGUMENTS sections' roff lines."""
    formatter = parser._get_formatter()
    options: List[str] = []
    positionals: List[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        help_text = _help_of(action, parser)
        if action.option_strings:
            names = []
            takes = action.nargs != 0
            for opt in action.option_strings:
                item = "\\fB" + _escape(opt) + "\\fR"
                if takes:
                    item += " \\fI" + _escape(_metavar(action, formatter)) + "\\fR"
                names.append(item)
            options += [".TP", ", ".join(names), _fill(help_text)]
        else:
            name = action.metavar if isinstance(action.metavar, str) else action.dest
            positionals += [".TP", "\\fI" + _escape(name) + "\\fR", _fill(help_text)]
    return options, positionals


def _synopsis(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    if usage.startswith("usage:"):
        usage = usage[len("usage:"):].strip()
    return _escape(" ".join(usage.split()))


def _page(title: str, summary: str, parser: argparse.ArgumentParser,
          extra: Sequence[str] = (), see_also: Sequence[str] = ()) -> str:
    lines = [
        f'.TH "{title.upper()}" "{SECTION}" "{_date()}" "{PROG} {__version__}" "User Commands"',
        ".SH NAME",
        f"{_escape(title)} \\- {_fill(summary)}",
        ".SH SYNOPSIS",
        _synopsis(parser),
        ".SH DESCRIPTION",
        _fill(parser.description or summary),
    ]
    options, positionals = _options(parser)
    if positionals:
        lines += [".SH ARGUMENTS", *positionals]
    if options:
        lines += [".SH OPTIONS", *options]
    lines += list(extra)
    if see_also:
        lines += [".SH SEE ALSO", ",\n".join(f"\\fB{_escape(p)}\\fR({SECTION})" for p in see_also)]
    return "\n".join(lines) + "\n"


def pages(parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, str]:
    """File name -> roff text of every page: the command's and each subcommand's."""
    parser = parser or build_parser()
    subs = _subcommands(parser)
    names = [f"{PROG}-{name}" for name, _, _ in subs]
    commands = [".SH COMMANDS"]
    for name, help_text, _ in subs:
        commands += [".TP", f"\\fB{_escape(name)}\\fR", _fill(help_text)]
    exits = [
        ".SH EXIT STATUS",
        "0 on success, 1 on failure, 2 on a usage error.",
    ]
    out = {
        f"{PROG}.{SECTION}": _page(PROG, parser.description or PROG, parser,
                                   [*commands, *exits], names),
    }
    for (name, help_text, sub), page in zip(subs, names):
        out[f"{page}.{SECTION}"] = _page(page, help_text, sub, exits,
                                         [PROG] + [n for n in names if n != page])
    return out


def write(outdir: str) -> List[str]:
    """Writes every page into OUTDIR; returns their paths, sorted."""
    os.makedirs(outdir, exist_ok=True)
    written = []
    for name, text in sorted(pages().items()):
        path = os.path.join(outdir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m xensr._manpage OUTDIR", file=sys.stderr)
        return 2
    for path in write(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
