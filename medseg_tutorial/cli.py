"""The ``medseg`` command line: one small function per subcommand, registered in ``COMMANDS``.

Heavy imports (torch, smp) happen inside the handlers so that ``medseg --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ._version import __version__

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand ``name`` with its argument setup and handler."""

    def deco(handler: Handler) -> Handler:
        COMMANDS[name] = (help, configure, handler)
        return handler

    return deco


# --- medseg data ... ---------------------------------------------------------------------------


def _data_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_cmd", required=True)
    c = sub.add_parser("check", help="scan a dataset folder (or a registered name) and report every problem")
    c.add_argument("target", help="a folder, or a registered dataset name")
    c.add_argument("--root", help="data root (default: $MEDSEG_DATA_ROOT)")
    s = sub.add_parser("summary", help="counts, shapes and class frequencies of a registered dataset")
    s.add_argument("name")
    s.add_argument("--root")
    sub.add_parser("list", help="registered datasets and whether they are present locally")
    f = sub.add_parser("fetch", help="download a dataset, or explain how to obtain it")
    f.add_argument("name")
    f.add_argument("--root")


@command("data", "inspect, check and fetch datasets", _data_args)
def _data(args: argparse.Namespace) -> int:
    from . import data

    if args.data_cmd == "check":
        report = data.check_dataset(args.target, root=args.root)
        print(report.format())
        return 0 if report.ok else 1
    if args.data_cmd == "summary":
        for key, value in data.summarize_dataset(args.name, root=args.root).items():
            print(f"{key:>16}: {value}")
        return 0
    if args.data_cmd == "list":
        print(data.format_dataset_list())
        return 0
    if args.data_cmd == "fetch":
        print(data.fetch_dataset(args.name, root=args.root))
        return 0
    raise AssertionError(args.data_cmd)


# --- medseg course ... -------------------------------------------------------------------------


def _course_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="course_cmd", required=True)
    e = sub.add_parser("export", help="write student (solutions removed) and teacher copies of the chapters")
    e.add_argument("dest", type=Path, help="output folder; student/ and teacher/ are written inside it")
    e.add_argument("--book", type=Path, help="folder of chapter notebooks (default: the repository's book/)")
    e.add_argument("--execute", action="store_true", help="run every copied notebook and report failures")
    e.add_argument("--timeout", type=int, default=600, help="seconds per cell with --execute (default 600)")
    e.add_argument("--force", action="store_true", help="replace existing student/ and teacher/ folders")


@command("course", "export the chapter notebooks for teaching a course", _course_args)
def _course(args: argparse.Namespace) -> int:
    from .course import export_course

    result = export_course(
        args.dest, args.book, execute=args.execute, timeout=args.timeout, overwrite=args.force
    )
    print(result.summary())
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medseg-tutorial {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, _) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medseg`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        # Errors from bad input are reported in one line; bugs still show a traceback.
        print(f"medseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
