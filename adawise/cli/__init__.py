"""The ``adawise`` command: one subcommand per module, imported only when used.

Each command module exposes ``add_arguments(parser)`` and ``main(args) -> int``. A misuse ends with exit
code 2 and one line on stderr: argparse's own errors (a missing or malformed option) and every
:class:`~adawise.errors.AdawiseError` a command raises. Any other exception is a bug and ends in a
traceback (no catch-all).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from adawise.errors import AdawiseError, one_line

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("adawise.apps.demo", "run every method on the bundled embedded world (no downloads)"),
    "run": ("adawise.apps.run_cmd", "run methods on an ImageNet-R / ImageNet-C stream with your own weights"),
    "report": ("adawise.apps.report", "tables and plots from run logs (JSONL)"),
    "vrf-index": ("adawise.apps.vrf_index", "build VRF's Zero-Shot-Failure index"),
    "show-corruptions": ("streams.corruptions_cli", "PNG grid of the 15 corruptions x 5 severities"),
    "sweep": ("adawise.apps.sweep", "grid of runs (methods x streams x settings x seeds), on Ray or locally"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors on one line: ``PROG: error: MESSAGE (see PROG --help)``, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def guarded(prog: str, main: Callable[..., Any], *args: Any) -> int:
    """``main(*args)`` as an exit code: an :class:`~adawise.errors.AdawiseError` becomes exit code 2 and
    one line on stderr naming ``prog``; every other exception propagates (a bug shows its traceback)."""
    try:
        return int(main(*args) or 0)
    except AdawiseError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    parser = ArgumentParser(prog="adawise", description="Test-time adaptation of weight-space ensembles.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adawise`` console script and ``python -m adawise``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-v", "--verbose") and len(argv) > 1 and argv[1] in COMMANDS:
        argv = [argv[1], argv[0], *argv[2:]]  # `adawise -v CMD ...` means `adawise CMD -v ...`
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)  # prints help / errors for unknown commands
        parser.print_help()
        return 0 if args.command is None else 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = ArgumentParser(prog=f"adawise {name}", description=help_text,
                         epilog=getattr(module, "EPILOG", None), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_libraries)
        # open_clip scripts a helper with torch.jit at import time; torch >= 2.10 warns about it
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    return guarded(f"adawise {name}", module.main, args)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Drop INFO chatter that libraries log on the root logger (open_clip: "Parsing tokenizer
    identifier ..." on every tokenizer); their warnings and errors still show."""
    return record.levelno > logging.INFO or "open_clip" not in record.pathname


if __name__ == "__main__":
    sys.exit(main())
