"""Command line.

``python -m mlsafe reproduce --lang th --model organism --device cpu``: the main job.
``python -m mlsafe ablate --lang th --model gemma-270m --only multi_layer``: some of the
ablations of mlsafe.ablations (ablations.csv) without the baselines' training runs.
``python -m mlsafe diagnose --lang th --model gemma-270m --margins-only``: the safety-neuron
diagnostics alone (diagnostics.json; needs the main run's summary.json for the edit layer).
"""

from __future__ import annotations

import argparse
import sys


def _with_run_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every subcommand shares (the Makefile's RUN_ARGS)."""
    p.add_argument("--lang", default="th", help="target language code(s), comma-separated, or 'all'")
    p.add_argument("--model", default="organism", help="organism | gemma-270m | hub id | local folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="auto", help="auto | fixtures | hub | a local folder")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlsafe", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rep = _with_run_args(sub.add_parser("reproduce", help="measure the gap, fit the edit, measure again, "
                                                          "write results/"))
    rep.add_argument("--seeds", type=int, nargs="*", default=[], help="extra seeds for the spread block")
    rep.add_argument("--layer", default=None, help="edit layer (default: chosen on validation anchors)")
    rep.add_argument("--rank", type=int, default=None)
    rep.add_argument("--no-extras", action="store_true",
                     help="skip the safety-neuron diagnostics and the lab grid (slow on CPU for real models)")
    abl = _with_run_args(sub.add_parser("ablate", help="run some ablations of the edit, write ablations.csv"))
    abl.add_argument("--only", nargs="+", default=None, help="ablation names (default: all)")
    abl.add_argument("--max-layers", type=int, default=3, help="most layers of the multi_layer ablation")
    dia = _with_run_args(sub.add_parser("diagnose", help="safety-neuron overlaps and amplification "
                                                         "(diagnostics.json)"))
    dia.add_argument("--margins-only", action="store_true",
                     help="amplification by refusal margin only, no generation (fast on CPU)")
    args = parser.parse_args(argv)

    from mlsafe.langs import parse_targets

    try:
        parse_targets(args.lang)
    except ValueError as err:
        parser.error(str(err))
    if args.cmd == "diagnose":
        from mlsafe import diagnostics

        path = diagnostics.run(args.model, args.lang, device=args.device, seed=args.seed, data=args.data,
                               with_asr=not args.margins_only)
        print(f"[mlsafe] wrote {path}")
    if args.cmd == "ablate":
        from mlsafe.ablations import ABLATIONS, run_ablations
        from mlsafe.langs import target_key
        from mlsafe.pipeline import load
        from mlsafe.results import results_dir

        only = args.only or list(ABLATIONS)
        bad = [a for a in only if a not in ABLATIONS]
        if bad:
            parser.error(f"unknown ablation(s) {bad}; choose from {list(ABLATIONS)}")
        lm, suite = load(args.model, device=args.device, seed=args.seed, data=args.data)
        out = results_dir(lm.name, target_key(parse_targets(args.lang)))
        df = run_ablations(lm, suite, args.lang, args.seed, out, ablations=only, max_layers=args.max_layers)
        print(f"[mlsafe] wrote {out / 'ablations.csv'} ({len(df)} rows)")

    if args.cmd == "reproduce":
        from mlsafe.pipeline import reproduce

        overrides = {}
        if args.layer is not None:
            overrides["layer"] = args.layer if args.layer == "auto" else int(args.layer)
        if args.rank is not None:
            overrides["rank"] = args.rank
        path = reproduce(args.lang, args.model, device=args.device, seed=args.seed, seeds=args.seeds,
                         data=args.data, extras=not args.no_extras, **overrides)
        print(f"[mlsafe] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
