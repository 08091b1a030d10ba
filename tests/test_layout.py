"""The shape of the package: stages return, the command line prints, and building the
command line loads nothing heavy.

* No module under `src/amygdala` outside `amygdala.cli` uses the builtin `print` — not as
  a call, and not as a value handed on (`announce=print` prints just the same). A stage
  returns what it did (`ExtractSummary`, `TrainResult`, a list of lines) or logs
  (`logging.getLogger(__name__)`); `amygdala.cli` prints, and shows the log lines
  (`amygdala.cli._log`). The source is read with `ast`, so `fingerprint(`, a docstring's
  `print(…)` example or a comment do not count, and a `print` that only runs inside a
  function does.
* `amygdala --help` builds every subcommand's flags, whose defaults and choices come from
  `amygdala._defaults` and the config dataclasses: none of that may import torch,
  transformers, numpy or the MCP SDK (a fresh interpreter is the reference).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "amygdala"
HEAVY = ("torch", "transformers", "numpy", "mcp", "starlette", "uvicorn", "safetensors")


def library_modules() -> list[Path]:
    """Every module of the package except the command line's (`amygdala/cli/`)."""
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "cli" not in path.relative_to(PACKAGE).parts[:-1]
    ]


def print_uses(source: str) -> list[int]:
    """Lines where `source` uses the builtin `print`: a call, a reference, `builtins.print`."""

    def is_print(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):  # a call or a reference: `print(…)`, `announce=print`
            return node.id == "print" and isinstance(node.ctx, ast.Load)
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "print"
            and isinstance(node.value, ast.Name)
            and node.value.id == "builtins"
        )

    nodes = ast.walk(ast.parse(source))
    return sorted({node.lineno for node in nodes if isinstance(node, ast.expr) and is_print(node)})


def test_no_library_module_outside_cli_prints() -> None:
    assert len(library_modules()) > 40  # the whole package, not an empty glob
    found = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in library_modules()
        if (lines := print_uses(path.read_text(encoding="utf-8")))
    }
    assert found == {}, (
        "library modules must return what they did or log it, and let amygdala.cli print: "
        + "; ".join(f"{name} lines {lines}" for name, lines in found.items())
    )


def test_print_finder_sees_calls_and_references_but_not_names_or_text() -> None:
    source = '''"""Example: print(summary)."""
import builtins
import sys

# print("a comment")


def fingerprint(x):
    return x


def report(lines, announce=print):
    for line in lines:
        print(line, file=sys.stderr)
    builtins.print("done")
    return fingerprint("print(")
'''
    assert print_uses(source) == [12, 14, 15]
    assert print_uses("def f(print_summary):\n    return print_summary\n") == []


def test_the_cli_modules_are_left_out_and_nothing_else() -> None:
    names = {str(p.relative_to(PACKAGE)) for p in library_modules()}
    assert "graph/extract.py" in names and "serve/engine.py" in names
    assert not [n for n in names if n.startswith("cli/")]
    every = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert every - names == {n for n in every if n.startswith("cli/")}


def test_building_every_flag_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from amygdala.cli import build_parser\n"
        "build_parser()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
