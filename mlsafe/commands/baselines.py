"""``mlsafe baselines``: the cost benchmark (cost.json), every baseline (baselines.csv) and every
ablation (ablations.csv) of one model, written beside the main run's summary.json.

The stages share one loaded model and suite; the baselines and the ablations also share one
fitted edit (mlsafe.pipeline.Context). The cost benchmark trains LoRA until its target ASR is
no higher than the edit's (mlsafe.baselines.bench); `make reproduce` runs every stage where
the backend's policy affords baselines, `make bench` the cost stage alone.
"""

from __future__ import annotations

from mlsafe.commands import add_run_args, chosen

HELP = "cost benchmark, baselines and ablations (cost.json, baselines.csv, ablations.csv)"
EXAMPLE = "mlsafe baselines --lang th --model organism --only cost"
STAGES = ("cost", "baselines", "ablations")


def add_arguments(p):
    add_run_args(p)
    p.add_argument("--only", nargs="+", default=None, help=f"stages, of {', '.join(STAGES)} (default: all)")
    p.add_argument("--max-steps", default="640", help="cap on LoRA steps of the cost benchmark (checkpoints at "
                                                      "every step to 10, then 20, 40, ...; default: 640)")
    p.add_argument("--lr", type=float, default=None,
                   help="LoRA learning rate (default: mlsafe.baselines.finetune.default_sft's)")
    p.add_argument("--preset", default="paper",
                   help="edit recipe of mlsafe.presets for the cost stage (paper, best or best-kl); a non-paper preset "
                        "writes results/<model>/<lang>-<preset>/ as reproduce does (default: paper)")


def run(args) -> int:
    import dataclasses
    import os

    from mlsafe.commands.reproduce import _int, check_run_args
    from mlsafe.errors import UserError
    from mlsafe.results import run_lock

    stages = chosen(args.only, STAGES, "stage(s)")
    if args.preset != "paper" and stages != ["cost"]:
        raise UserError("--preset applies to the cost stage only: add --only cost")
    max_steps = _int(args.max_steps, "--max-steps", 1)
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    out = check_run_args(args)  # the same folder as reproduce's

    import torch

    from mlsafe.ablations import run_ablations
    from mlsafe.baselines.bench import SCHEDULE, bench_cost, format_report
    from mlsafe.baselines.finetune import default_sft
    from mlsafe.baselines.run import run_baselines
    from mlsafe.langs import parse_targets
    from mlsafe.pipeline import Context
    from mlsafe.results import write_json
    from mlsafe.suites import load

    # one thread unless OMP_NUM_THREADS says otherwise: the committed timings were taken so
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    targets = parse_targets(args.lang)
    with run_lock(out):  # not while a reproduce run swaps this folder
        lm, suite = load(args.model, device=args.device, seed=args.seed, data=args.data)
        sft = default_sft(lm, args.seed)
        if args.lr:
            sft = dataclasses.replace(sft, lr=args.lr)
        if "cost" in stages:
            schedule = [s for s in SCHEDULE if s < max_steps] + [max_steps]
            res = bench_cost(lm, suite, targets, args.seed, schedule=schedule, sft=sft, preset=args.preset)
            print(f"[mlsafe] cost: model={lm.name} device={args.device}")
            print(format_report(res))
            write_json(out / "cost.json", res)
        ctx = Context.fit(lm, suite, targets, args.seed) if {"baselines", "ablations"} & set(stages) else None
        if "baselines" in stages:
            df = run_baselines(lm, suite, targets, args.seed, out, sft=sft, context=ctx)
            print(f"[mlsafe] wrote {out / 'baselines.csv'} ({len(df)} rows)")
        if "ablations" in stages:
            df = run_ablations(lm, suite, targets, args.seed, out, context=ctx)
            print(f"[mlsafe] wrote {out / 'ablations.csv'} ({len(df)} rows)")
    return 0
