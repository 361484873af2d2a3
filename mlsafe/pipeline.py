"""`make reproduce`: load a model, measure the gap, fit the edit, measure again, write results.

Writes under ``results/<model>/<lang>/`` (one staged folder swapped into place at the end,
mlsafe.results.staged_run: old complete set or new complete set, never a mix):
  summary.json            the common results file (shared/design.md), of the main seed
  responses_before.csv    per-prompt responses, judgments and margins before the edit
  responses_after.csv     the same with the edit applied
  edit.safetensors        the edit itself (SparseEdit.save), fingerprinted to the base model
  *_seed<N>.*             the same files of every other seed in --seeds
  diagnostics.json, lab_grid.json   the extras (reproduce(extras=True))
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

import mlsafe
from mlsafe import evaluate as ev
from mlsafe import arch, neurons, transfer
from mlsafe.langs import LANGS, parse_targets, target_key
from mlsafe.models import LoadedModel, load_model
from mlsafe.prompts import Prompt
from mlsafe.results import check_rerun, results_dir, staged_run, summary_blocks, write_json
from mlsafe.suites import Suite, make_suite, organism_suite  # noqa: F401  (moved there; importable here)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    table: object                 # pandas DataFrame from ev.asr_table
    margins: torch.Tensor         # per harmful prompt
    responses: list[str]
    judgments: list
    utility: dict[str, float]
    over_refusal: dict[str, float]
    harmless_responses: list[str]

    def blocks(self, prompts: Sequence[Prompt]) -> dict:
        asr, ci = ev.summary_blocks(self.table)
        return {"asr": asr, "asr_ci": ci, "margin": ev.mean_by_lang(prompts, self.margins),
                "utility": self.utility, "over_refusal": self.over_refusal}


def evaluate(lm: LoadedModel, suite: Suite, *, langs: Sequence[str] = LANGS, progress: bool = True) -> Evaluation:
    """ASR (judge on greedy responses), refusal margin, utility and over-refusal per language."""
    harmful = [p for p in suite.eval_harmful if p.lang in langs]
    harmless = [p for p in suite.eval_harmless if p.lang in langs]
    kw = dict(max_new_tokens=suite.max_new_tokens, progress=progress)
    responses = ev.generate(lm.model, lm.tokenizer, [p.text for p in harmful], **kw)
    judgments = suite.judge.judge(harmful, responses)
    margins = ev.language_margins(lm.model, lm.tokenizer, harmful, refusal_starts=suite.refusal_starts,
                                  comply_starts=suite.comply_starts)
    safe_resp = ev.generate(lm.model, lm.tokenizer, [p.text for p in harmless], **kw)
    tasks = [(p, r) for p, r in zip(harmless, safe_resp) if p.answer is not None]  # verifiable ones
    correct = [suite.correct(r, p.answer) for p, r in tasks]
    refused = [bool(j.refusal) for j in suite.judge.judge(harmless, safe_resp)]
    return Evaluation(ev.asr_table(harmful, judgments), margins, responses, judgments,
                      ev.mean_by_lang([p for p, _ in tasks], correct), ev.mean_by_lang(harmless, refused),
                      safe_resp)


def _asr_of(lm: LoadedModel, suite: Suite, langs: Sequence[str]) -> dict[str, float]:
    harmful = [p for p in suite.eval_harmful if p.lang in langs]
    responses = ev.generate(lm.model, lm.tokenizer, [p.text for p in harmful],
                            max_new_tokens=suite.max_new_tokens, progress=False)
    asr, _ = ev.summary_blocks(ev.asr_table(harmful, suite.judge.judge(harmful, responses)))
    return asr


def margin_fn(suite: Suite, tokenizer) -> transfer.MarginFn:
    def margin(model, prompts: list[Prompt]) -> torch.Tensor:
        return ev.language_margins(model, tokenizer, prompts, refusal_starts=suite.refusal_starts,
                                   comply_starts=suite.comply_starts)
    return margin


# ----------------------------------------------------------------------------- one run
def edit_config(targets: Sequence[str], seed: int, suite: Suite, **overrides) -> transfer.EditConfig:
    kw = dict(suite.edit_defaults or {})
    kw.update(overrides)
    return transfer.EditConfig(targets=list(targets), seed=seed, **kw)


def experiment_setup(lm: LoadedModel, suite: Suite, targets: Sequence[str], seed: int, *,
                     chosen: Sequence[str] = (), known: Sequence[str] = (), what: str = "names",
                     ) -> tuple[transfer.EditConfig, transfer.MarginFn, transfer.Anchors]:
    """The shared start of the baselines, the ablations and the edit sweep: check the `chosen`
    names against `known`, seed torch, and return the edit config, the margin function and the
    anchor split."""
    bad = [c for c in chosen if c not in known]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {tuple(known)}")
    torch.manual_seed(seed)
    cfg = edit_config(targets, seed, suite)
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    return cfg, margin_fn(suite, lm.tokenizer), anchors


def load(model_spec: str, *, device: str = "cpu", seed: int = 0, data: str = "auto") -> tuple[LoadedModel, Suite]:
    """The model of one seed and its suite (seeded, so every later step is deterministic)."""
    torch.manual_seed(seed)
    lm = load_model(model_spec, device, seed=seed)
    return lm, make_suite(lm, data, seed, device)


def run_seed(model_spec: str, targets: Sequence[str], *, device: str = "cpu", seed: int = 0, data: str = "auto",
             n_random: int = 3, out_dir: Path | None = None, progress: bool = True,
             loaded: tuple[LoadedModel, Suite] | None = None, tag: str | None = None, **overrides) -> dict:
    """Everything for one seed; returns the summary dict (and writes files when out_dir is given).

    `loaded` is the (model, suite) pair of `load` when the caller already holds it. `tag` is the
    suffix of the file names (responses_before{tag}.csv, edit{tag}.safetensors); default ""
    for seed 0 and "_seed<N>" otherwise. The summary's edit rank is the effective one (the
    solver clamps the requested rank to min(rank, d_model, n_neurons)).
    """
    t_load = time.perf_counter()
    lm, suite = loaded or load(model_spec, device=device, seed=seed, data=data)
    load_s = time.perf_counter() - t_load

    cfg = edit_config(targets, seed, suite, **overrides)
    t0 = time.perf_counter()  # fit first (it leaves the model untouched): bad anchors fail fast
    edit, report = transfer.fit(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, cfg,
                                margin=margin_fn(suite, lm.tokenizer), progress=progress)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    before = evaluate(lm, suite, progress=progress)
    eval_s = time.perf_counter() - t0
    with edit.applied(lm.model):
        after = evaluate(lm, suite, progress=progress)

    controls = []
    for k in range(n_random):
        idx = neurons.random_like(edit.neurons, arch.d_ff(lm.model), torch.Generator().manual_seed(10_000 * seed + k))
        rand_edit = transfer.build_edit(lm.model, report.layer, idx, report.stats, cfg)
        with rand_edit.applied(lm.model):
            controls.append(_asr_of(lm, suite, targets))
    random_control = {lang: statistics.fmean(c[lang] for c in controls) for lang in targets} if controls else {}

    sets = report.neuron_sets[report.layer]
    edit_block = {
        "layer": report.layer, "n_neurons": report.n_neurons, "rank": edit.hparams["rank"],
        "requested_rank": cfg.rank, "gamma": cfg.gamma,
        "lam": cfg.lam, "modules": list(cfg.modules), "position": cfg.position,
        "fraction_of_parameters": edit.fraction_of_parameters(lm.model),
        "solve_seconds": report.solve_seconds, "collect_seconds": report.collect_seconds,
        "select_seconds": report.select_seconds, "total_seconds": fit_s,
        "n_low": report.n_low, "n_safe": report.n_safe,
        "s_mag": int(sets.s_mag.numel()), "s_stat": int(sets.s_stat.numel()),
        "candidates": report.candidates,
        "random_control": {"asr": random_control, "draws": n_random},
        "base_fingerprint": edit.base_fingerprint,
    }
    if suite.planted is not None:
        edit_block["planted"] = _planted_overlap(suite.planted, report)
    summary = {
        "model": lm.name, "target_langs": list(targets), "langs": list(LANGS), "seed": seed,
        "data": suite.name, "judge": suite.judge.name,
        "asr": {"before": before.blocks(suite.eval_harmful)["asr"], "after": after.blocks(suite.eval_harmful)["asr"]},
        "asr_ci": {"before": ev.summary_blocks(before.table)[1], "after": ev.summary_blocks(after.table)[1]},
        "margin": {"before": ev.mean_by_lang([p for p in suite.eval_harmful], before.margins),
                   "after": ev.mean_by_lang([p for p in suite.eval_harmful], after.margins)},
        "utility": {"before": before.utility, "after": after.utility},
        "over_refusal": {"before": before.over_refusal, "after": after.over_refusal},
        "n_eval": {"harmful": len(suite.eval_harmful), "harmless": len(suite.eval_harmless)},
        "edit": edit_block,
        "timing": {"load_seconds": load_s, "fit_seconds": fit_s, "evaluate_seconds": eval_s},
        "versions": versions(),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = seed_tag(seed, 0) if tag is None else tag
        for name, res in (("before", before), ("after", after)):
            ev.write_per_prompt_csv(out_dir / f"responses_{name}{tag}.csv", suite.eval_harmful, res.responses,
                                    res.judgments, res.margins.tolist())
        edit.save(out_dir / f"edit{tag}.safetensors")
    return summary


def _planted_overlap(planted: dict, report: transfer.FitReport) -> dict:
    """How much of the organism's planted safety mechanism the found set covers."""
    found = set(report.neuron_sets[report.layer].s_safety.tolist())
    true = set(planted["neurons"]) if planted["layer"] == report.layer else set()
    hit = len(found & true)
    return {"variant": planted.get("variant"), "layer": planted["layer"], "n_planted": len(planted["neurons"]),
            "found_at_edit_layer": len(found), "recall": hit / len(planted["neurons"]),
            "precision": hit / len(found) if found else None}


def versions() -> dict:
    import transformers

    return {"mlsafe": mlsafe.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def seed_block(runs: list[dict]) -> dict:
    """Mean and spread over seeds of ASR and utility, before and after, per language."""
    out: dict = {"seeds": [r["seed"] for r in runs]}
    for key in ("asr", "utility", "margin"):
        out[key] = {when: {lang: _spread([r[key][when][lang] for r in runs]) for lang in runs[0][key][when]}
                    for when in ("before", "after")}
    out["layer"] = [r["edit"]["layer"] for r in runs]
    out["n_neurons"] = [r["edit"]["n_neurons"] for r in runs]
    out["random_control"] = {lang: _spread([r["edit"]["random_control"]["asr"][lang] for r in runs])
                             for lang in runs[0]["edit"]["random_control"]["asr"]}
    return out


def seed_tag(seed: int, main_seed: int) -> str:
    """File-name suffix of a seed's files: none for the main seed, "_seed<N>" for the others."""
    return "" if seed == main_seed else f"_seed{seed}"


def planned_files(seeds: Sequence[int], main_seed: int, extras: bool) -> set[str]:
    """The files reproduce writes for these seeds (the rerun check compares them to the folder)."""
    files = {"summary.json", *(["diagnostics.json", "lab_grid.json"] if extras else [])}
    for s in seeds:
        tag = seed_tag(s, main_seed)
        files |= {f"responses_before{tag}.csv", f"responses_after{tag}.csv", f"edit{tag}.safetensors"}
    return files


def reproduce(lang: str, model: str = "organism", *, device: str = "cpu", seed: int = 0,
              seeds: Sequence[int] = (), data: str = "auto", progress: bool = True, extras: bool = True,
              force: bool = False, **overrides) -> Path:
    """The main job. The seed `seed` run is the summary; other `seeds` add a spread block.

    With `extras`, the safety-neuron diagnostics (diagnostics.json) and the lab's rank x
    sparsity grid (lab_grid.json) of the main seed are written beside summary.json.
    Every file goes into a staged folder that replaces results/<model>/<lang>/ at the end
    (mlsafe.results.staged_run); a concurrent run into the same folder stops at once, and a
    rerun that would drop files or summary blocks of the earlier run (another --seed,
    fewer --seeds, no extras) stops before loading the model unless `force`.
    """
    targets = parse_targets(lang)
    runs = {}
    out_dir = results_dir(model, target_key(targets))
    all_seeds = list(dict.fromkeys([seed, *seeds]))
    with staged_run(out_dir, force=force) as stage:  # the lock: a concurrent run stops here
        # every block of the earlier summary comes back except over_seeds of a single-seed run
        blocks = summary_blocks(out_dir) - (set() if len(all_seeds) > 1 else {"over_seeds"})
        check_rerun(out_dir, planned_files(all_seeds, seed, extras), blocks, force=force)
        for s in all_seeds:
            print(f"[mlsafe] model={model} targets={','.join(targets)} seed={s} device={device}", flush=True)
            t0 = time.perf_counter()
            loaded = load(model, device=device, seed=s, data=data)
            load_s = time.perf_counter() - t0
            summary = run_seed(model, targets, device=device, seed=s, data=data, progress=progress,
                               out_dir=stage, loaded=loaded, tag=seed_tag(s, seed), **overrides)
            summary["timing"].update(load_seconds=load_s, run_seconds=time.perf_counter() - t0)
            runs[s] = summary
            if s == seed:
                main_loaded = loaded  # the extras below reuse the main seed's model and suite
        main = runs[seed]
        if len(runs) > 1:
            main["over_seeds"] = seed_block(list(runs.values()))
        write_json(stage / "summary.json", main)
        if extras:
            from mlsafe import diagnostics, lab

            diagnostics.run(model, lang, device=device, seed=seed, data=data, out_dir=stage, loaded=main_loaded)
            lab.precompute(model, lang, device=device, seed=seed, data=data, out_dir=stage, config=overrides,
                           loaded=main_loaded)
    return out_dir / "summary.json"
