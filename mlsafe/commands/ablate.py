"""``mlsafe ablate``: some ablations of the edit (ablations.csv) without the baselines' training runs."""

from __future__ import annotations

from mlsafe.commands import add_run_args, chosen

HELP = "run some ablations of the edit, write ablations.csv"
EXAMPLE = "mlsafe ablate --lang th --model gemma-270m --only multi_layer"


def add_arguments(p):
    add_run_args(p)
    p.add_argument("--only", nargs="+", default=None, help="ablation names (default: all)")
    p.add_argument("--max-layers", default="3", help="most layers of the multi_layer ablation (default: 3)")


def run(args) -> int:
    from mlsafe.ablations import ABLATIONS, run_ablations
    from mlsafe.commands.reproduce import _int, check_run_args
    from mlsafe.results import run_lock
    from mlsafe.suites import load

    only = chosen(args.only, ABLATIONS, "ablation(s)")
    max_layers = _int(args.max_layers, "--max-layers", 1)
    out = check_run_args(args)  # the same folder as reproduce's (keyed by --model, not the loaded name)
    with run_lock(out):  # not while a reproduce run swaps this folder
        lm, suite = load(args.model, device=args.device, seed=args.seed, data=args.data)
        df = run_ablations(lm, suite, args.lang, args.seed, out, ablations=only, max_layers=max_layers)
    print(f"[mlsafe] wrote {out / 'ablations.csv'} ({len(df)} rows)")
    return 0
