"""The ``xensr`` command line.

Subcommands are registered in :data:`SUBCOMMANDS`: name -> "module" or
"module:attribute".  The target (a module, or an object inside one) provides

* ``HELP``: a one-line description,
* ``add_arguments(parser)``: adds its options to an argparse parser,
* ``run(args) -> int``: does the work and returns the exit status,
* optionally ``check_args(args) -> str | None``: what is wrong with the
  arguments taken together (a usage error, exit 2), checked before ``run``.

Modules are imported only when their subcommand runs, so ``xensr inspect``
does not load the extension module or anything else it does not need.

Exit statuses: 0 success, 1 failure (e.g. a malformed file: one line on
stderr naming the byte offset and the reason), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from .errors import StreamFormatError, XensrError

PROG = "xensr"

#: name -> "module[:attribute]" implementing HELP, add_arguments, run.
SUBCOMMANDS: Dict[str, str] = {
    "inspect": "xensr.cli:INSPECT",
    "demo": "xensr.demo",
    "migrate": "xensr.migrate.cli:MIGRATE",
    "migrate-receive": "xensr.migrate.cli:MIGRATE_RECEIVE",
}

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    if attr:
        obj = getattr(obj, attr)
    return obj


def _error(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    line = " ".join(str(message).split("\n"))
    print(f"{PROG}: {line}", file=sys.stderr)


# --------------------------------------------------------------------------
# inspect


class _Inspect:
    HELP = "check an xl save file or migration stream and summarise its records"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="xl save file, libxl v2 or libxc stream ('-' for standard input)")
        p.add_argument("--json", action="store_true", help="print a machine-readable JSON document")
        p.add_argument(
            "--format",
            choices=("xl", "libxl", "libxc"),
            default=None,
            help="stream format (default: detected from the magic)",
        )

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from . import stream

        try:
            summary = stream.scan_file(args.file, fmt=args.format)
        except StreamFormatError as e:
            error = {"offset": e.offset, "reason": e.reason, "message": str(e)}
            return _Inspect.fail(args, str(e), error)
        except OSError as e:
            # A missing file, a directory, unreadable: no offset to give.
            message = e.strerror or str(e)
            error = {"offset": None, "reason": "unreadable", "errno": e.errno, "message": message}
            return _Inspect.fail(args, message, error)
        if args.json:
            print(json.dumps(summary.to_dict(), indent=2))
        else:
            sys.stdout.write(stream.format_summary(summary))
        return EXIT_OK

    @staticmethod
    def fail(args: argparse.Namespace, message: str, error: Dict[str, Any]) -> int:
        """One line on stderr; with ``--json`` also the document saying why."""
        _error(f"inspect: {args.file}: {message}")
        if args.json:
            print(json.dumps({"file": args.file, "valid": False, "error": error}, indent=2))
        return EXIT_FAILURE


INSPECT = _Inspect()


# --------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    from . import XEN_VERSION, __version__

    built = f"built for Xen {XEN_VERSION}" if XEN_VERSION else "not built"
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Save and restore Xen domains without blocking; tools for their save files.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__} ({built})")
    # The global options xl puts before its subcommand, so that xensr runs
    # where xl's migration command line names xl.
    parser.add_argument("-v", dest="verbose", action="count", default=0,
                        help="more verbose messages (repeat for more)")
    parser.add_argument("-t", dest="progress_cr", action="store_true",
                        help="progress shown with carriage returns (as xl -t)")
    parser.add_argument("-T", dest="timestamps", action="store_true",
                        help="timestamps on messages (as xl -T)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in sorted(SUBCOMMANDS):
        target = _load(SUBCOMMANDS[name])
        p = sub.add_parser(name, help=target.HELP, description=target.HELP)
        target.add_arguments(p)
        p.set_defaults(_target=target, _parser=p)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """A subcommand's check of its arguments taken together; a problem is
    reported as argparse reports a usage error (exits 2)."""
    check = getattr(args._target, "check_args", None)
    problem = check(args) if check is not None else None
    if problem:
        args._parser.error(problem)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status (the console script exits with it)."""
    args_list: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
        _check_args(args)
    except SystemExit as e:  # argparse: 0 for --help/--version, 2 for usage
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    try:
        status = args._target.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output closed early (e.g. piped into head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILURE
    except XensrError as e:
        _error(f"{args.command}: {e}")
        return EXIT_FAILURE
    except OSError as e:  # a file the command could not create, read or write
        _error(f"{args.command}: {e}")
        return EXIT_FAILURE
    return int(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
