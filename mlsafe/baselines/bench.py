"""Cost of reaching the same ASR: the paper's edit vs the training baseline, side by side.

The edit is fitted once (wall time of `transfer.fit`, layer selection included) and its
mean ASR over the target languages is the bar. The LoRA fine-tune (`finetune`) then trains
in growing chunks (`schedule`, cumulative steps); after each chunk the adapters are merged
and the target ASR measured (evaluation time is not counted). It stops at the first chunk
whose ASR is <= the edit's, or at the end of the schedule, in which case the ratio is a
lower bound (``reached`` is False). Ratios are training / edit, in seconds and in estimated
FLOPs (`cost`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from mlsafe import pipeline, transfer
from mlsafe.baselines import cost, finetune
from mlsafe.baselines.run import edit_flops, lang_metrics
from mlsafe.langs import parse_targets

SCHEDULE = (5, 10, 20, 40, 80, 160, 320, 640)


def _target_asr(lm, suite, targets) -> float:
    return statistics.fmean(v["asr"] for v in lang_metrics(lm, suite, targets).values())


def bench_cost(lm, suite: pipeline.Suite, targets: str | Sequence[str], seed: int = 0, *,
               schedule: Sequence[int] = SCHEDULE, sft: finetune.SFTConfig | None = None) -> dict:
    """{"edit": {...}, "train": {...}, "curve": [...], "ratio_seconds", "ratio_flops", "reached"}."""
    targets = parse_targets(targets)
    if not schedule or any(b <= a for a, b in zip(schedule, schedule[1:])) or schedule[0] < 1:
        raise ValueError(f"schedule must be strictly increasing positive step counts, got {list(schedule)}")
    model, tok = lm.model, lm.tokenizer
    cfg = pipeline.edit_config(targets, seed, suite)
    base_asr = _target_asr(lm, suite, targets)
    t0 = time.perf_counter()
    edit, report = transfer.fit(model, tok, suite.anchors_harmful, suite.anchors_harmless, cfg,
                                margin=pipeline.margin_fn(suite, tok))
    edit_s = time.perf_counter() - t0
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    edit_f = edit_flops(model, tok, anchors, cfg, report)
    with edit.applied(model):
        edit_asr = _target_asr(lm, suite, targets)

    scfg = sft or finetune.default_sft(lm, seed)
    examples = finetune.sft_examples(tok, anchors.fit_harmful, anchors.fit_harmless, targets, source=cfg.source,
                                     max_len=scfg.max_len)
    trainer = finetune.LoRATrainer(model, examples, scfg, pad_id=tok.pad_token_id or 0)
    n_par = cost.matmul_params(model)
    curve, reached = [], False
    for steps in schedule:
        trainer.train(steps - trainer.steps_done)
        with trainer.delta().applied(model):
            asr = _target_asr(lm, suite, targets)
        curve.append({"steps": steps, "asr": asr, "seconds": trainer.seconds,
                      "flops": cost.train_flops(n_par, trainer.tokens), "loss": trainer.losses[-1]})
        if asr <= edit_asr:
            reached = True
            break
    last = curve[-1]
    return {"targets": targets, "base_asr": base_asr,
            "edit": {"asr": edit_asr, "seconds": edit_s, "flops": edit_f, "layer": report.layer,
                     "n_neurons": report.n_neurons},
            "train": {"asr": last["asr"], "steps": last["steps"], "seconds": last["seconds"], "flops": last["flops"],
                      "lr": scfg.lr, "rank": scfg.rank, "batch_size": scfg.batch_size},
            "curve": curve, "reached": reached,
            "ratio_seconds": last["seconds"] / edit_s, "ratio_flops": last["flops"] / edit_f}


def format_report(res: dict) -> str:
    """The lines `make bench` prints."""
    e, tr = res["edit"], res["train"]
    bound = "" if res["reached"] else " (lower bound: training never reached the edit's ASR)"
    if e["asr"] >= res["base_asr"]:
        bound += " (the edit did not lower the ASR here, so this ratio says nothing about cost)"
    lines = [f"targets {','.join(res['targets'])}: ASR before {res['base_asr']:.3f}",
             f"edit      : ASR {e['asr']:.3f}  {e['seconds']:8.2f} s  {e['flops']:.3e} FLOPs  "
             f"(layer {e['layer']}, |S|={e['n_neurons']})",
             f"training  : ASR {tr['asr']:.3f}  {tr['seconds']:8.2f} s  {tr['flops']:.3e} FLOPs  "
             f"({tr['steps']} LoRA steps)",
             *(f"  step {c['steps']:5d}: ASR {c['asr']:.3f}  {c['seconds']:8.2f} s  loss {c['loss']:.3f}"
               for c in res["curve"]),
             f"ratio training / edit to reach the same ASR: {res['ratio_seconds']:.1f}x wall time, "
             f"{res['ratio_flops']:.1f}x FLOPs{bound}"]
    return "\n".join(lines)
