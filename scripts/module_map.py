"""The module map of mlsafe: lines per module and the longest functions (issue 15's closing note).

    .venv/bin/python scripts/module_map.py [--rev GIT_REV] [--top 10]

Reads mlsafe/**/*.py from the working tree, or from commit GIT_REV (`git show`), and prints
a Markdown table of every module's line count (sorted by path) and the `--top` longest
functions and methods (lines from `def` to the end of the body, decorators excluded).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources(rev: str | None) -> dict[str, str]:
    """{path under the repository: text} of every mlsafe/**/*.py, at `rev` or in the working tree."""
    if rev is None:
        return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
                for p in sorted((ROOT / "mlsafe").rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "mlsafe"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout for n in sorted(names) if n.endswith(".py")}


def functions(path: str, text: str) -> list[tuple[int, str]]:
    """(lines, "path:qualified.name") of every function and method in one module."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((child.end_lineno - child.lineno + 1, f"{path}:{prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(text), "")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default=None, help="a git revision (default: the working tree)")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args(argv)
    src = sources(args.rev)
    lines = {p: len(t.splitlines()) for p, t in src.items()}
    print(f"## mlsafe at {args.rev or 'the working tree'}: {len(src)} modules, {sum(lines.values())} lines\n")
    print("| module | lines |\n|---|---:|")
    for p, n in lines.items():
        print(f"| {p} | {n} |")
    longest = sorted((f for p, t in src.items() for f in functions(p, t)), key=lambda f: (-f[0], f[1]))
    print(f"\n| {args.top} longest functions | lines |\n|---|---:|")
    for n, name in longest[:args.top]:
        print(f"| {name} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
