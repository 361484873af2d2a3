"""Cost of reaching the same ASR: the paper's edit vs the training baseline, side by side.

The edit (the recipe of a preset, mlsafe.presets) is fitted once (wall time of
`transfer.fit`, layer selection included); its mean ASR over the target languages and its
mean refusal margin on the target validation anchors are the bar. The LoRA fine-tune
(`finetune`) then trains in growing chunks (`schedule`, cumulative steps); after each chunk
the adapters are merged and both measured (evaluation time is not counted). It stops at the
first chunk whose ASR is <= the edit's and whose validation margin is >= the edit's, or at
the end of the schedule, in which case the ratio is a lower bound (``reached`` is False).
Ratios are training / edit, in seconds and in FLOPs counted as fed (`cost.MatmulCounter`:
every linear layer's rows in the passes the fit and the training steps actually run, the
training's backward as 2x its forward; the fit's Gram streaming and solves by formula);
the `cost` estimates (whole-model passes over the real tokens) sit beside them as
``flops_estimate``.

What each side costs harmless prompts is recorded beside it (not part of the stopping rule, and
not timed): the mean refusal-margin gain on the harmless validation anchors and their mean
first-token KL(p_base || p_changed) (mlsafe.evaluate.kl), for the edit and for every checkpoint.
The edit's wall time with its layer given (the statistics pass, the neuron sets and the solve;
no validation margins per candidate) is ``edit.seconds_layer_given``, with its ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from mlsafe import pipeline, presets, transfer
from mlsafe.baselines import cost, finetune
from mlsafe.baselines.run import edit_flops, fit_solve_flops, gram_flops
from mlsafe.evaluate.kl import first_token_kl_per_prompt
from mlsafe.evaluate.run import asr_of
from mlsafe.langs import parse_targets

#: Checkpoints (cumulative LoRA steps): every step up to 10, so the step that reaches the edit is
#: exact where training is quick, then doubling.
SCHEDULE = (*range(1, 11), 20, 40, 80, 160, 320, 640)


def _target_asr(lm, suite, targets) -> float:
    """Mean ASR over the targets' harmful prompts (responses only: no harmless generation)."""
    return statistics.fmean(asr_of(lm.model, lm.tokenizer, suite, targets)[0].values())


def bench_cost(lm, suite: pipeline.Suite, targets: str | Sequence[str], seed: int = 0, *,
               schedule: Sequence[int] = SCHEDULE, sft: finetune.SFTConfig | None = None,
               preset: str = "paper") -> dict:
    """{"edit": {...}, "train": {...}, "curve": [...], "ratio_seconds", "ratio_flops", "reached",
    "preset"}."""
    targets = parse_targets(targets)
    if not schedule or any(b <= a for a, b in zip(schedule, schedule[1:])) or schedule[0] < 1:
        raise ValueError(f"schedule must be strictly increasing positive step counts, got {list(schedule)}")
    model, tok = lm.model, lm.tokenizer
    cfg = pipeline.edit_config(targets, seed, suite, **presets.resolve(preset, model))
    margin = pipeline.margin_fn(suite, tok)
    base_asr = _target_asr(lm, suite, targets)
    t0 = time.perf_counter()
    with cost.MatmulCounter() as fed:
        edit, report = transfer.fit(model, tok, suite.anchors_harmful, suite.anchors_harmless, cfg, margin=margin)
    edit_s = time.perf_counter() - t0
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    val_margins = lambda: transfer.validation_margins(model, anchors, cfg, margin)[:2]  # noqa: E731  target harmful, harmless
    harmless_kl = lambda change: float(first_token_kl_per_prompt(model, tok, list(anchors.val_harmless),  # noqa: E731
                                                                 change).mean())
    base_margin, base_harmless = val_margins()
    edit_f = fed.flops + gram_flops(model, tok, anchors, cfg, len(report.candidates)) + fit_solve_flops(model, cfg, report)
    with edit.applied(model):
        edit_asr, (edit_margin, edit_harmless) = _target_asr(lm, suite, targets), val_margins()
    edit_kl = harmless_kl(edit)

    scfg = sft or finetune.default_sft(lm, seed)
    examples = finetune.sft_examples(tok, anchors.fit_harmful, anchors.fit_harmless, targets, source=cfg.source,
                                     max_len=scfg.max_len)
    trainer = finetune.LoRATrainer(model, examples, scfg, pad_id=tok.pad_token_id or 0)
    n_par = cost.matmul_params(model)
    curve, reached = [], False
    train_fed = 0.0
    for steps in schedule:
        with cost.MatmulCounter() as counted:
            trainer.train(steps - trainer.steps_done)
        train_fed += 3.0 * counted.flops
        delta = trainer.delta()
        with delta.applied(model):
            asr, (m, m_harmless) = _target_asr(lm, suite, targets), val_margins()
        curve.append({"steps": steps, "asr": asr, "val_margin": m, "seconds": trainer.seconds,
                      "flops": train_fed, "flops_estimate": cost.train_flops(n_par, trainer.tokens),
                      "loss": trainer.losses[-1],
                      "harmless_margin_gain": m_harmless - base_harmless, "harmless_kl": harmless_kl(delta)})
        if asr <= edit_asr and m >= edit_margin:
            reached = True
            break
    last = curve[-1]
    st = report.stage_seconds
    layer_given = st["statistics"] + st["neurons"] + st["solve"]
    return {"targets": targets, "preset": preset, "base_asr": base_asr, "base_val_margin": base_margin,
            "edit": {"asr": edit_asr, "val_margin": edit_margin, "seconds": edit_s, "flops": edit_f,
                     "flops_estimate": edit_flops(model, tok, anchors, cfg, report),
                     "layer": report.layer, "n_neurons": report.n_neurons,
                     "stage_seconds": report.stage_seconds, "seconds_layer_given": layer_given,
                     "harmless_margin_gain": edit_harmless - base_harmless, "harmless_kl": edit_kl},
            "train": {"asr": last["asr"], "val_margin": last["val_margin"], "steps": last["steps"],
                      "seconds": last["seconds"], "flops": last["flops"], "flops_estimate": last["flops_estimate"],
                      "harmless_margin_gain": last["harmless_margin_gain"], "harmless_kl": last["harmless_kl"],
                      "lr": scfg.lr, "rank": scfg.rank, "batch_size": scfg.batch_size},
            "curve": curve, "reached": reached,
            "ratio_seconds": last["seconds"] / edit_s, "ratio_flops": last["flops"] / edit_f,
            "ratio_seconds_layer_given": last["seconds"] / layer_given}


def format_report(res: dict) -> str:
    """The lines `make bench` prints."""
    e, tr = res["edit"], res["train"]
    bound = "" if res["reached"] else " (lower bound: training never reached the edit's ASR and margin)"
    if e["asr"] >= res["base_asr"]:
        bound += " (the edit did not lower the ASR here, so this ratio says nothing about cost)"
    lines = [f"targets {','.join(res['targets'])} (preset {res.get('preset', 'paper')}): ASR before "
             f"{res['base_asr']:.3f}, validation margin before {res['base_val_margin']:+.3f}",
             f"edit      : ASR {e['asr']:.3f}  margin {e['val_margin']:+.3f}  {e['seconds']:8.2f} s  "
             f"{e['flops']:.3e} FLOPs  (layer {e['layer']}, |S|={e['n_neurons']}; harmless KL {e['harmless_kl']:.3f})",
             f"training  : ASR {tr['asr']:.3f}  margin {tr['val_margin']:+.3f}  {tr['seconds']:8.2f} s  "
             f"{tr['flops']:.3e} FLOPs  ({tr['steps']} LoRA steps; harmless KL {tr['harmless_kl']:.3f})",
             *(f"  step {c['steps']:5d}: ASR {c['asr']:.3f}  margin {c['val_margin']:+.3f}  {c['seconds']:8.2f} s  "
               f"loss {c['loss']:.3f}  harmless KL {c['harmless_kl']:.3f}" for c in res["curve"]),
             f"ratio training / edit to reach the same ASR and validation margin: {res['ratio_seconds']:.1f}x "
             f"wall time, {res['ratio_flops']:.1f}x FLOPs{bound}",
             f"with the edit's layer given ({e['seconds_layer_given']:.2f} s: statistics, neurons, solve): "
             f"{res['ratio_seconds_layer_given']:.1f}x wall time"]
    return "\n".join(lines)
