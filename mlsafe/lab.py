"""The book's lab: the edit re-solved over a rank x sparsity grid, written to
``results/<model>/<lang>/lab_grid.json``, plus a fast live recompute for Jupyter.

Rank r is the constraint of eq. 4-8 (Theorem 4.1 keeps the top-r singular triplets of the
whitened ridge solution R M). Sparsity is the fraction of the English safety set S
(eq. 16) that is edited: the top ceil(fraction * |S|) neurons ranked by Cohen's d
(eq. 14-15; ties broken by the z-score of eq. 13), or by z ("z"). Each cell re-solves from
the statistics the fit already streamed (`FitReport.stats`) with `transfer.build_edit`, so
no statistic needs a new forward pass; only the evaluation generates: ASR on the target
languages' and on English harmful prompts, and utility on harmless prompts of the same
languages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mlsafe import evaluate as ev
from mlsafe import neurons, transfer
from mlsafe.diagnostics import edit_layer, per_lang
from mlsafe.langs import SOURCE, parse_targets, target_key
from mlsafe.prompts import Prompt
from mlsafe.results import results_dir, write_json
from mlsafe.suites import edit_config, load

DEFAULT_RANKS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
DEFAULT_SPARSITIES: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
RANKINGS = ("d", "z")


def ranked(sets: neurons.NeuronSets, by: str = "d") -> torch.Tensor:
    """S_safety ordered from most to least harm-selective: by Cohen's d then z ("d"), or by z then d."""
    if by not in RANKINGS:
        raise ValueError(f"by must be one of {RANKINGS}, got {by!r}")
    idx = sets.s_safety
    d = sets.cohens_d[idx].clamp(max=1e300).numpy()
    z = sets.z[idx].numpy()
    order = np.lexsort((-z, -d)) if by == "d" else np.lexsort((-d, -z))
    return idx[torch.from_numpy(order.copy())]


def subset(sets: neurons.NeuronSets, fraction: float, by: str = "d") -> torch.Tensor:
    """The top ceil(fraction * |S|) neurons of S (sorted indices), at least one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sparsity (fraction of the safety set kept) must lie in (0, 1], got {fraction}")
    order = ranked(sets, by)
    if order.numel() == 0:
        raise ValueError("the safety set is empty: nothing to edit; lower tau_mag / tau_stat")
    k = max(1, math.ceil(fraction * order.numel()))
    return order[:k].sort().values


@dataclass
class Lab:
    """A loaded model with its suite and the chosen layer's statistics, ready to re-solve the edit."""

    model: torch.nn.Module
    tokenizer: object
    suite: object
    cfg: transfer.EditConfig
    report: transfer.FitReport
    harmful: list[Prompt]
    harmless: list[Prompt]
    by: str = "d"

    @classmethod
    def from_model(cls, model, tokenizer, suite, cfg: transfer.EditConfig, *, by: str = "d",
                   max_eval_per_lang: int | None = None) -> "Lab":
        """Stream the statistics at cfg.layer (an explicit layer) once; evaluation prompts are the
        target languages' and English's (a seeded sample of at most max_eval_per_lang each)."""
        if cfg.layer == "auto":
            raise ValueError("the lab re-solves at one layer: give cfg.layer explicitly "
                             "(e.g. the main run's summary.json edit.layer)")
        if by not in RANKINGS:
            raise ValueError(f"by must be one of {RANKINGS}, got {by!r}")
        _, report = transfer.fit(model, tokenizer, suite.anchors_harmful, suite.anchors_harmless, cfg)
        langs = [SOURCE, *cfg.targets]
        harmful = per_lang([p for p in suite.eval_harmful if p.lang in langs], max_eval_per_lang, cfg.seed)
        harmless = per_lang([p for p in suite.eval_harmless if p.lang in langs and p.answer is not None],
                            max_eval_per_lang, cfg.seed)
        return cls(model, tokenizer, suite, cfg, report, harmful, harmless, by)

    @property
    def layer(self) -> int:
        return self.report.layer

    @property
    def safety_set(self) -> neurons.NeuronSets:
        return self.report.neuron_sets[self.report.layer]

    def edit(self, rank: int, sparsity: float):
        """The SparseEdit for one grid cell (rank clipped to the number of neurons kept)."""
        idx = subset(self.safety_set, sparsity, self.by)
        cfg = replace(self.cfg, rank=max(1, min(int(rank), int(idx.numel()))))
        return transfer.build_edit(self.model, self.layer, idx, self.report.stats, cfg)

    def evaluate(self) -> dict:
        """Target-language ASR (mean over targets), English ASR and utility of the model as it is."""
        s, kw = self.suite, dict(max_new_tokens=self.suite.max_new_tokens, progress=False)
        responses = ev.generate(self.model, self.tokenizer, [p.text for p in self.harmful], **kw)
        asr, _ = ev.summary_blocks(ev.asr_table(self.harmful, s.judge.judge(self.harmful, responses)))
        out = {"asr_target": float(np.mean([asr[t] for t in self.cfg.targets if t in asr])),
               "asr_en": asr.get(SOURCE, float("nan")), "asr": asr}
        if self.harmless:
            answers = ev.generate(self.model, self.tokenizer, [p.text for p in self.harmless], **kw)
            out["utility"] = float(np.mean([s.correct(r, p.answer) for r, p in zip(answers, self.harmless)]))
        else:
            out["utility"] = None
        return out

    def cell(self, rank: int, sparsity: float) -> dict:
        """Re-solve and evaluate one cell (the live lab calls this from a slider callback)."""
        t0 = time.perf_counter()
        edit = self.edit(rank, sparsity)
        with edit.applied(self.model):
            out = self.evaluate()
        b = edit.factors[self.cfg.modules[0]][1]                        # [r, m]
        out.update(rank=int(rank), sparsity=float(sparsity), effective_rank=int(b.shape[0]),
                   n_neurons=int(edit.neurons.numel()), seconds=time.perf_counter() - t0)
        return out


def grid(lab: Lab, ranks: Sequence[int] = DEFAULT_RANKS,
         sparsities: Sequence[float] = DEFAULT_SPARSITIES) -> dict:
    """The whole grid as JSON-ready data: the unedited baseline and one cell per (rank, sparsity)."""
    if not ranks or not sparsities:
        raise ValueError("ranks and sparsities must be non-empty")
    m = int(lab.safety_set.s_safety.numel())
    usable = sorted({min(int(r), m) for r in ranks if int(r) >= 1}) if m else []
    if not usable:
        raise ValueError(f"no usable rank in {list(ranks)} (need >= 1; the safety set has {m} neurons)")
    ranks = usable
    baseline = lab.evaluate()
    cells = [lab.cell(r, f) for r in ranks for f in sparsities]
    return {"layer": lab.layer, "targets": list(lab.cfg.targets), "by": lab.by, "n_safety": m,
            "ranks": ranks, "sparsities": [float(f) for f in sparsities],
            "baseline": baseline, "cells": cells,
            "config": {"gamma": lab.cfg.gamma, "lam": lab.cfg.lam, "modules": list(lab.cfg.modules),
                       "solver": lab.cfg.solver, "position": lab.cfg.position},
            "n_eval": {"harmful": len(lab.harmful), "harmless": len(lab.harmless)}}


def open_lab(model_spec: str, lang: str, *, device: str = "cpu", seed: int = 0, data: str = "auto",
             layer: int | None = None, by: str = "d", max_eval_per_lang: int | None = None,
             config: dict | None = None, loaded=None) -> Lab:
    """Load the model and its suite and stream the statistics at the edit layer (read from the
    main run's summary.json unless given) with the main run's hyper-parameters (`config`: the
    EditConfig overrides the main run was given, e.g. {"gamma": 0.5}). `loaded`: the (model,
    suite) pair of mlsafe.suites.load when the caller already holds it."""
    targets = parse_targets(lang)
    if layer is None:
        layer = edit_layer(results_dir(model_spec, target_key(targets)))
    lm, suite = loaded or load(model_spec, device=device, seed=seed, data=data)
    cfg = edit_config(targets, seed, suite, **{**(config or {}), "layer": int(layer)})
    return Lab.from_model(lm.model, lm.tokenizer, suite, cfg, by=by, max_eval_per_lang=max_eval_per_lang)


def precompute(model_spec: str, lang: str, *, ranks: Sequence[int] = DEFAULT_RANKS,
               sparsities: Sequence[float] = DEFAULT_SPARSITIES, out_dir: Path | None = None,
               layer: int | None = None, **kw) -> Path:
    """Compute the lab grid for a model (keywords as `open_lab`); write lab_grid.json into out_dir
    (default results/<model>/<lang>/, whose summary.json gives the layer unless `layer` is given)."""
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else results_dir(model_spec, target_key(parse_targets(lang)))
    lab = open_lab(model_spec, lang, layer=edit_layer(out) if layer is None else layer, **kw)
    data = grid(lab, ranks, sparsities)
    data["model"] = model_spec
    data["seconds"] = time.perf_counter() - t0
    path = out / "lab_grid.json"
    write_json(path, data)
    return path


def grid_frame(data: dict):
    """lab_grid.json's cells as a pandas DataFrame (one row per cell)."""
    import pandas as pd

    cols = ["rank", "sparsity", "effective_rank", "n_neurons", "asr_target", "asr_en", "utility", "seconds"]
    return pd.DataFrame([{c: cell[c] for c in cols} for cell in data["cells"]])

