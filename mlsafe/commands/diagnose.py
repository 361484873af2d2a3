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

    path = diagnostics.run(args.model, args.lang, device=args.device, seed=args.seed, data=args.data,
                           with_asr=not args.margins_only)
    print(f"[mlsafe] wrote {path}")
    return 0
