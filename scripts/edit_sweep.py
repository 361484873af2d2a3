"""Refusal-margin gains of edit variants on validation anchors (held-out shown for reference).

Usage: OMP_NUM_THREADS=1 python scripts/edit_sweep.py [--model gemma-270m] [--lang th]
       [--layers 5,10,11,12] [--order 10,11,5]
Fits each variant of the edit (rank, gamma, modules, tau, read position; single layers and
layers stacked in `--order`) on the fit anchors and prints, against the unedited model, the
mean margin gain on the validation anchors (target harmful, harmless, English harmful) and on
the held-out target prompts, plus the held-out share of prompts with a positive margin. It
chooses nothing: it is how the defaults of chapter 8 were checked (margins only, no generation).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from mlsafe import neurons, pipeline, transfer

COLUMNS = ("val_h", "val_s", "val_en", "held_h", "held_s", "held_h>0", "held_s>0")
VARIANTS = {
    "default": {}, "rank 16": {"rank": 16}, "rank 64": {"rank": 64}, "gamma 0.1": {"gamma": 0.1},
    "gamma 10": {"gamma": 10.0}, "up only": {"modules": ("up",)}, "gate only": {"modules": ("gate",)},
    "tau 1.5/0.75": {"tau_mag": 1.5, "tau_stat": 0.75}, "tau 3/1.5": {"tau_mag": 3.0, "tau_stat": 1.5},
}
POSITIONS = ("last5", "mean")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-270m")
    ap.add_argument("--lang", default="th")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", default="5,10,11,12", help="single layers; variants run on the second")
    ap.add_argument("--order", default="10,11,5", help="layers stacked one after another")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lm, suite = pipeline.load(args.model, seed=args.seed)
    model, tok = lm.model, lm.tokenizer
    cfg, margin, anchors = pipeline.experiment_setup(lm, suite, [args.lang], args.seed)
    held_h = [p for p in suite.eval_harmful if p.lang == args.lang]
    held_s = [p for p in suite.eval_harmless if p.lang == args.lang]

    def measure() -> list[float]:
        h, s = margin(model, held_h), margin(model, held_s)
        return transfer.validation_margins(model, anchors, cfg, margin) + [
            h.mean().item(), s.mean().item(), (h > 0).double().mean().item(), (s > 0).double().mean().item()]

    base = measure()
    print(f"{'unedited':34s}" + " ".join(f"{c} {b:+.2f}" for c, b in zip(COLUMNS, base)), flush=True)

    def show(tag: str) -> None:
        m = measure()
        print(f"{tag:34s}" + " ".join(f"{c} {x - b:+.2f}" if i < 5 else f"{c} {x:.2f}"
                                     for i, (c, x, b) in enumerate(zip(COLUMNS, m, base))), flush=True)

    def edit_at(layer: int, c: transfer.EditConfig, st) -> tuple:
        sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=c.tau_mag,
                                                   tau_stat=c.tau_stat)
        return transfer.build_edit(model, layer, sets.s_safety, st, c), int(sets.s_safety.numel())

    layers = [int(x) for x in args.layers.split(",")]
    stats = transfer.collect_stats(model, tok, anchors, cfg, layers)
    for layer in layers:
        for tag, kw in VARIANTS.items():
            if tag != "default" and layer != layers[min(1, len(layers) - 1)]:
                continue
            edit, n = edit_at(layer, dataclasses.replace(cfg, **kw), stats[layer])
            with edit.applied(model):
                show(f"L{layer} {tag} |S|={n}")
    for position in POSITIONS:
        c = dataclasses.replace(cfg, position=position)
        layer = layers[min(1, len(layers) - 1)]
        edit, n = edit_at(layer, c, transfer.collect_stats(model, tok, anchors, c, [layer])[layer])
        with edit.applied(model):
            show(f"L{layer} position {position} |S|={n}")
    patches = []
    try:
        for k, layer in enumerate(int(x) for x in args.order.split(",")):
            edit, n = edit_at(layer, cfg, transfer.collect_stats(model, tok, anchors, cfg, [layer])[layer])
            patches.append(edit.apply(model))
            show(f"stacked +L{layer} |S|={n}")
    finally:
        for p in reversed(patches):
            p.revert()
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
