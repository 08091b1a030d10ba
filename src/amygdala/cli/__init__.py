"""The `amygdala` command line: one subcommand per module in this package.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`, and imports heavy libraries (torch, transformers) only inside
`run`, so `amygdala --help` stays instant. Adding a subcommand is one module plus one
entry in `COMMANDS`.

Errors derived from `AmygdalaError` are printed as one `error: …` line with a non-zero
exit code. An `OSError` that escapes a command (every write goes through `amygdala._io`,
which names the path and the cause itself, so this is the last resort) is printed the
same way, with exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from amygdala import __version__
from amygdala.cli._log import log_to_stderr
from amygdala.errors import AmygdalaError

# subcommand name -> module (relative to this package)
COMMANDS: dict[str, str] = {
    "train": "train",
    "extract": "extract",
    "run": "run",
    "validate": "validate",
    "memory-server": "memory_server",
    "readout": "readout",
    "serve": "serve",
    "watch": "watch",
    "report": "report",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"amygdala.cli.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand attached."""
    parser = argparse.ArgumentParser(
        prog="amygdala",
        description="Train concept-readout vectors for language models and read them out.",
    )
    parser.add_argument("--version", action="version", version=f"amygdala {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `amygdala` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        with log_to_stderr():  # the library logs; the command line shows it (cli/_log.py)
            code = int(args._module.run(args) or 0)
    except AmygdalaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `amygdala … | head`: the reader left; say nothing more
        _drop_stdout()
        return 1
    except OSError as exc:  # the last resort: every write names its path through _io
        _drop_stdout()
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    try:
        sys.stdout.flush()  # a full disk or a closed pipe behind stdout shows here, not at exit
    except BrokenPipeError:
        _drop_stdout()
        return 1
    except OSError as exc:
        _drop_stdout()
        print(f"error: cannot write standard output: {os_error_line(exc)}", file=sys.stderr)
        return 2
    return code


def _drop_stdout() -> None:
    """Point stdout at /dev/null when it cannot be written, so that Python's flush at exit
    adds no second message."""
    try:
        sys.stdout.flush()
    except OSError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def os_error_line(exc: OSError) -> str:
    """`[Errno 28] No space left on device: 'x'` as `x: No space left on device`."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {cause}" if names else cause


def run_subcommand(name: str, argv: Sequence[str] | None = None) -> int:
    """Run one subcommand as if `amygdala NAME argv…` was typed (for `python -m` shims)."""
    rest = list(sys.argv[1:] if argv is None else argv)
    return main([name, *rest])
