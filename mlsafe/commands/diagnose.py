"""``mlsafe diagnose``: the safety-neuron diagnostics alone (diagnostics.json; needs the main
run's summary.json for the edit layer)."""

from __future__ import annotations

from mlsafe.commands import add_run_args

HELP = "safety-neuron overlaps and amplification (diagnostics.json)"
EXAMPLE = "mlsafe diagnose --lang th --model gemma-270m --margins-only"


def add_arguments(p):
    add_run_args(p)
    p.add_argument("--margins-only", action="store_true",
                   help="amplification by refusal margin only, no generation (fast on CPU)")


def run(args) -> int:
    from mlsafe import diagnostics
    from mlsafe.commands.reproduce import check_run_args
    from mlsafe.errors import UserError
    from mlsafe.results import run_lock

    out = check_run_args(args)
    if not (out / "summary.json").is_file():
        raise UserError(f"{out / 'summary.json'} not found: run `mlsafe reproduce` with the same "
                        "--model and --lang first")
    with run_lock(out):  # not while a reproduce run swaps this folder
        path = diagnostics.run(args.model, args.lang, device=args.device, seed=args.seed, data=args.data,
                               with_asr=not args.margins_only, out_dir=out)
    print(f"[mlsafe] wrote {path}")
    return 0
