"""Command line: ``python -m mlsafe reproduce --lang th --model organism --device cpu``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlsafe", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rep = sub.add_parser("reproduce", help="measure the gap, fit the edit, measure again, write results/")
    rep.add_argument("--lang", default="th", help="target language code(s), comma-separated, or 'all'")
    rep.add_argument("--model", default="organism", help="organism | gemma-270m | hub id | local folder")
    rep.add_argument("--device", default="cpu")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--seeds", type=int, nargs="*", default=[], help="extra seeds for the spread block")
    rep.add_argument("--data", default="auto", help="auto | fixtures | hub | a local folder")
    rep.add_argument("--layer", default=None, help="edit layer (default: chosen on validation anchors)")
    rep.add_argument("--rank", type=int, default=None)
    args = parser.parse_args(argv)

    if args.cmd == "reproduce":
        from mlsafe.langs import parse_targets
        from mlsafe.pipeline import reproduce

        try:
            parse_targets(args.lang)
        except ValueError as err:
            parser.error(str(err))
        overrides = {}
        if args.layer is not None:
            overrides["layer"] = args.layer if args.layer == "auto" else int(args.layer)
        if args.rank is not None:
            overrides["rank"] = args.rank
        path = reproduce(args.lang, args.model, device=args.device, seed=args.seed, seeds=args.seeds,
                         data=args.data, **overrides)
        print(f"[mlsafe] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
