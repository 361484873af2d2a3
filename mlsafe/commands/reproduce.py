"""``mlsafe reproduce``: measure the gap, fit the edit, measure again, write results/."""

from __future__ import annotations

from mlsafe.commands import add_run_args

HELP = "measure the gap, fit the edit, measure again, write results/"
EXAMPLE = "mlsafe reproduce --lang th --model organism"


def add_arguments(p):
    add_run_args(p)
    p.add_argument("--seeds", type=int, nargs="*", default=[], help="extra seeds for the spread block")
    p.add_argument("--layer", default=None, help="edit layer (default: chosen on validation anchors)")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--no-extras", action="store_true",
                   help="skip the safety-neuron diagnostics and the lab grid (slow on CPU for real models)")


def run(args) -> int:
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
