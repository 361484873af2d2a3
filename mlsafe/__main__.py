"""Command line: ``mlsafe <command>`` (also ``python -m mlsafe <command>``).

The subcommands live in :mod:`mlsafe.commands` (one module each, listed in its
``COMMANDS`` registry). Errors the user can fix print one line and exit 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    import mlsafe
    from mlsafe.commands import COMMANDS

    parser = argparse.ArgumentParser(prog="mlsafe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mlsafe {mlsafe.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    modules = {}
    for name, module_name in COMMANDS.items():
        mod = importlib.import_module(module_name)
        p = sub.add_parser(name, help=mod.HELP, description=f"{mod.HELP}\n\nexample:\n  {mod.EXAMPLE}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from mlsafe.errors import UserError

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "lang") and not getattr(modules[args.cmd], "ANY_LANGUAGE", False):
            from mlsafe.langs import parse_targets

            try:
                parse_targets(args.lang)
            except ValueError as err:
                raise UserError(str(err)) from None
        return modules[args.cmd].run(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"mlsafe {args.cmd}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
