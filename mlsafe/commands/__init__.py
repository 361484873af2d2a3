"""Subcommands of ``mlsafe`` (and ``python -m mlsafe``), one module each.

Every module defines ``HELP`` (one line), ``EXAMPLE`` (one command line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries
(torch, transformers) inside ``run`` only, so ``mlsafe --help`` stays fast.
User-fixable problems raise :class:`mlsafe.errors.UserError`: the CLI prints its one
line and exits 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse

#: subcommand name -> module (the registry the CLI is built from; order = help order).
COMMANDS: dict[str, str] = {
    "reproduce": "mlsafe.commands.reproduce",
    "ablate": "mlsafe.commands.ablate",
    "baselines": "mlsafe.commands.baselines",
    "diagnose": "mlsafe.commands.diagnose",
    "ceiling": "mlsafe.commands.ceiling",
    "edit": "mlsafe.commands.edit",
    "apply": "mlsafe.commands.apply",
    "audit": "mlsafe.commands.audit",
    "judge": "mlsafe.commands.judge",
}


def chosen(values, allowed, what: str) -> list:
    """`values` (or every allowed one when None), each checked to be in `allowed` (UserError naming them)."""
    from mlsafe.errors import UserError

    values = list(values or allowed)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad}; choose from {list(allowed)}")
    return values


def add_run_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options the experiment subcommands share (the Makefile's RUN_ARGS)."""
    from mlsafe.backends import DEFAULT_BACKEND   # light: the registry imports no torch

    p.add_argument("--lang", default="th", help="target language code(s), comma-separated, or 'all' (default: th)")
    p.add_argument("--model", default=DEFAULT_BACKEND,
                   help="a registered backend name (organism, gemma-270m, ...), a hub id or a local folder "
                        f"(default: {DEFAULT_BACKEND})")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--data", default="auto", help="auto | fixtures | hub | a local data root (default: auto)")
    return p
