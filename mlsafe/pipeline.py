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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

import mlsafe
from mlsafe import evaluate as ev
from mlsafe import arch, presets, transfer
from mlsafe.backends import DEFAULT_BACKEND, backend_for
from mlsafe.controls import random_control_sets
from mlsafe.edit import Fingerprints, SparseEdit
from mlsafe.evaluate.metrics import gap_closed, gap_closed_by
from mlsafe.evaluate.run import Evaluation, asr_of
from mlsafe.evaluate.run import evaluate as run_evaluation
from mlsafe.langs import LANGS, parse_targets, target_key
from mlsafe.models import LoadedModel
from mlsafe.results import check_rerun, results_dir, staged_run, summary_blocks, write_json
from mlsafe.suites import Suite, edit_config, load, make_suite, margin_fn, organism_suite  # noqa: F401  (importable here)
from mlsafe.trunk import Trunk

#: The per-language metrics of `lang_metrics` (the columns baselines.csv and ablations.csv share).
METRICS = ("asr", "utility", "over_refusal", "margin")


# ----------------------------------------------------------------------------- evaluation
def evaluate(lm: LoadedModel, suite: Suite, *, langs: Sequence[str] = LANGS, progress: bool = True,
             seed: int = 0, **cached) -> Evaluation:
    """mlsafe.evaluate.run.evaluate on a loaded model (the one evaluation API)."""
    return run_evaluation(lm.model, lm.tokenizer, suite, langs=langs, progress=progress, seed=seed, **cached)


def lang_metrics(lm: LoadedModel, suite: Suite, langs: Sequence[str] = LANGS) -> dict[str, dict[str, float]]:
    """{lang: {asr, utility, over_refusal, margin}} from `evaluate` (greedy + judge), the view the
    baselines and the ablations tabulate (NaN where a language has no such prompt)."""
    e = evaluate(lm, suite, langs=langs, progress=False)
    asr, _ = ev.summary_blocks(e.table)
    margin = ev.mean_by_lang([p for p in suite.eval_harmful if p.lang in langs], e.margins)
    nan = float("nan")
    return {lang: {"asr": asr.get(lang, nan), "utility": e.utility.get(lang, nan),
                   "over_refusal": e.over_refusal.get(lang, nan), "margin": margin.get(lang, nan)}
            for lang in langs if lang in asr or lang in e.utility}


# ----------------------------------------------------------------------------- one run
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


@dataclass
class Context:
    """What the baselines and the ablations share on one (model, suite, targets, seed): the
    edit config, margin function and anchor split of `experiment_setup`, and the paper's edit
    fitted once on them (transfer.fit) with its FitReport (chosen layer, neuron sets, streamed
    statistics) and fit time. `once(key, make)` keeps a value several registry entries share
    (e.g. the fitted refusal direction, the base model's metrics)."""

    lm: LoadedModel
    suite: Suite
    targets: list[str]
    seed: int
    cfg: transfer.EditConfig
    margin: transfer.MarginFn
    anchors: transfer.Anchors
    edit: SparseEdit
    report: transfer.FitReport
    fit_seconds: float
    shared: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, lm: LoadedModel, suite: Suite, targets: Sequence[str], seed: int, *,
            chosen: Sequence[str] = (), known: Sequence[str] = (), what: str = "names",
            progress: bool = False) -> "Context":
        """`experiment_setup` (names checked before any work), then the edit fitted and timed."""
        cfg, margin, anchors = experiment_setup(lm, suite, targets, seed, chosen=chosen, known=known, what=what)
        t0 = time.perf_counter()
        edit, report = transfer.fit(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, cfg,
                                    margin=margin, progress=progress)
        return cls(lm, suite, list(targets), seed, cfg, margin, anchors, edit, report, time.perf_counter() - t0)

    @property
    def model(self):
        return self.lm.model

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def metrics(self) -> dict[str, dict[str, float]]:
        """`lang_metrics` of the model as it is now (edits applied by the caller count)."""
        return lang_metrics(self.lm, self.suite)

    def once(self, key: str, make: Callable[[], object]):
        """`make()` the first time `key` is asked for, the kept value afterwards."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


def run_seed(model_spec: str, targets: Sequence[str], *, device: str = "cpu", seed: int = 0, data: str = "auto",
             n_random: int = 3, n_random_asr: int | None = None, out_dir: Path | None = None,
             progress: bool = True, loaded: tuple[LoadedModel, Suite] | None = None, tag: str | None = None,
             preset: str = "paper", **overrides) -> dict:
    """Everything for one seed; returns the summary dict (and writes files when out_dir is given).

    `loaded` is the (model, suite) pair of `load` when the caller already holds it. `tag` is the
    suffix of the file names (responses_before{tag}.csv, edit{tag}.safetensors); default ""
    for seed 0 and "_seed<N>" otherwise. The summary's edit rank is the effective one (the
    solver clamps the requested rank to min(rank, d_model, n_neurons)). `n_random` random
    neuron sets of the edit's size, disjoint from it, are fitted with the same solver and
    statistics (the control); all get margins on the target prompts, the first
    `n_random_asr` (default all) also an ASR with paired tests against the edit. `preset`
    (mlsafe.presets) sets the edit recipe over the suite's defaults; `overrides` win over both.
    """
    t_load = time.perf_counter()
    lm, suite = loaded or load(model_spec, device=device, seed=seed, data=data)
    load_s = time.perf_counter() - t_load
    n_random_asr = n_random if n_random_asr is None else min(n_random_asr, n_random)

    # 1. fit the edit first (it leaves the model untouched): bad anchors fail fast
    cfg = edit_config(targets, seed, suite, **{**presets.resolve(preset, lm.model), **overrides})
    t0 = time.perf_counter()
    fps = Fingerprints(lm.model)  # the unedited model's hash, once (every apply below checks it)
    edit, report = transfer.fit(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, cfg,
                                margin=margin_fn(suite, lm.tokenizer), progress=progress, fingerprints=fps)
    fit_s = time.perf_counter() - t0
    # 2. evaluate the unedited model (responses cached for real models: the same for every target;
    #    generated here, its harmless prompts' first-token logits are kept for 5.)
    t0 = time.perf_counter()
    base = response_cache_key(lm, suite, fps)
    before = cached_evaluation(lm, suite, base, None, seed=seed, progress=progress, keep_harmless_logits=True)
    eval_s = time.perf_counter() - t0
    # 3. evaluate with the edit applied (keeping the harmless prompts' first-token logits for 5.;
    #    the unedited responses are the drafts its greedy decoding verifies: mlsafe.evaluate.draft)
    t0 = time.perf_counter()
    with edit.applied(lm.model, fingerprints=fps):
        after = cached_evaluation(lm, suite, base, edit, seed=seed, progress=progress, keep_harmless_logits=True,
                                  drafts=before)
    after_s = time.perf_counter() - t0
    # 4. the random-neuron control: same size, disjoint from S, same solver and statistics
    t0 = time.perf_counter()
    control = random_control(lm, suite, edit, report, cfg, targets, after, seed=seed, n_random=n_random,
                             n_random_asr=n_random_asr, fingerprints=fps, drafts=before)
    control_s = time.perf_counter() - t0
    # 5. first-token KL from the unedited model on harmless prompts; each side comes from step
    #    2's or 3's generation when it ran here (one pass or none instead of two)
    t0 = time.perf_counter()
    edited_logits, after.harmless_first_logits = after.harmless_first_logits, None
    base_logits, before.harmless_first_logits = before.harmless_first_logits, None
    if not before.harmless:
        kl = {}
    elif edited_logits is not None:
        kl = ev.mean_by_lang(before.harmless, ev.first_token_kl_given(lm.model, lm.tokenizer, before.harmless,
                                                                      edited_logits, base_logits=base_logits))
    else:
        kl = ev.first_token_kl(lm.model, lm.tokenizer, before.harmless, edit)
    del edited_logits, base_logits
    kl_s = time.perf_counter() - t0

    sets = report.neuron_sets[report.layer]
    edit_block = {
        "preset": preset, "neuron_set": cfg.neuron_set, "neuron_k": cfg.neuron_k,
        "layer": report.layer, "n_neurons": report.n_neurons, "rank": edit.hparams["rank"],
        "requested_rank": cfg.rank, "gamma": cfg.gamma,
        "lam": cfg.lam, "modules": list(cfg.modules), "position": cfg.position,
        "fraction_of_parameters": edit.fraction_of_parameters(lm.model),
        "solve_seconds": report.solve_seconds, "collect_seconds": report.collect_seconds,
        "select_seconds": report.select_seconds, "total_seconds": fit_s,
        "n_low": report.n_low, "n_safe": report.n_safe,
        "s_mag": int(sets.s_mag.numel()), "s_stat": int(sets.s_stat.numel()),
        "candidates": report.candidates,
        "random_control": control,
        "base_fingerprint": edit.base_fingerprint,
    }
    if suite.planted is not None:
        edit_block["planted"] = _planted_overlap(suite.planted, report)
    blocks_b, blocks_a = before.blocks(), after.blocks()
    summary = {
        "model": lm.name, "target_langs": list(targets), "langs": list(LANGS), "seed": seed,
        "data": suite.name, "judge": suite.judge.name, "asr_metric": getattr(suite.judge, "asr_metric", None),
        **{key: {"before": blocks_b[key], "after": blocks_a[key]} for key in blocks_b},
        "kl": {"after": kl},
        "gap_closed": gap_closed(blocks_b["asr"], blocks_a["asr"], control["asr"], targets),
        "gap_closed_by": gap_closed_by(blocks_b, blocks_a, control, targets),
        "compare": {"after_vs_before": ev.compare(before.harmful, before.judgments, after.judgments, seed=seed,
                                                  pooled=[t for t in targets if t in {p.lang for p in before.harmful}])},
        "n_eval": {"harmful": len(before.harmful), "harmless": len(before.harmless)},
        "edit": edit_block,
        "timing": {"load_seconds": load_s, "fit_seconds": fit_s, "evaluate_seconds": eval_s,
                   "evaluate_edited_seconds": after_s, "control_seconds": control_s, "kl_seconds": kl_s,
                   # generated in this run: the edited model's responses (the unedited ones are cached)
                   "tokens_per_second": after.timing.get("tokens_per_second")
                   or before.timing.get("tokens_per_second")},
        "versions": versions(),
    }
    if getattr(suite, "report", None):
        summary["data_report"] = _data_report(suite.report)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = seed_tag(seed, 0) if tag is None else tag
        chars = suite.response_chars
        for name, res in (("before", before), ("after", after)):
            ev.write_per_prompt_csv(out_dir / f"responses_{name}{tag}.csv", res.harmful, res.responses,
                                    res.judgments, res.margins.tolist(), max_response_chars=chars)
            if chars is not None:  # real models: the harmless responses too, for utility and over-refusal
                ev.write_per_prompt_csv(out_dir / f"harmless_{name}{tag}.csv", res.harmless,
                                        res.harmless_responses, res.harmless_judgments,
                                        max_response_chars=HARMLESS_RESPONSE_CHARS)
        edit.save(out_dir / f"edit{tag}.safetensors")
    return summary


#: Characters of each harmless-prompt response kept in committed files of real models (the
#: answer of a direct-answer MGSM item or a refusal opening fits; the cache keeps it all).
HARMLESS_RESPONSE_CHARS = 300


def random_control(lm: LoadedModel, suite: Suite, edit, report: transfer.FitReport, cfg: transfer.EditConfig,
                   targets: Sequence[str], after: Evaluation, *, seed: int, n_random: int,
                   n_random_asr: int, fingerprints: Fingerprints | None = None,
                   drafts: Evaluation | None = None) -> dict:
    """The random-neuron control of the edit (lead 2 of the method issue): `n_random` sets of
    |S| neurons drawn disjoint from S at the edit's layer (mlsafe.controls), each solved
    with the same statistics and hyper-parameters. Margins on the target harmful prompts for
    every draw; ASR and paired tests against the edit (same prompts) for the first
    `n_random_asr`; `drafts` (the unedited evaluation) are verified rather than decoded there.
    The margin-only draws share the layers below the edit (mlsafe.trunk). Returns the
    summary's random_control block."""
    harmful_t = [p for p in suite.eval_harmful if p.lang in targets]
    edit_j = [j for p, j in zip(after.harmful, after.judgments) if p.lang in targets]
    edit_m = [float(m) for p, m in zip(after.harmful, after.margins.tolist()) if p.lang in targets]
    margin = margin_fn(suite, lm.tokenizer)
    asrs, non_refusals, compares, compares_nr, margins, per_prompt = [], [], [], [], [], []
    draws = random_control_sets(edit.neurons, arch.d_ff(lm.model), seed, n_random, disjoint=True)
    # every draw edits the same layer, so the layers below it are run once for all margin passes:
    # recorded on the first (its edit leaves its layer's input as it was), replayed after
    trunk = Trunk(lm.model, report.layer)
    for k, idx in enumerate(draws):
        # the model is unedited here, so its fingerprint at this layer is the edit's own base
        rand_edit = transfer.build_edit(lm.model, report.layer, idx, report.stats, cfg,
                                        base_fingerprint=edit.base_fingerprint)
        with rand_edit.applied(lm.model, fingerprints=fingerprints):
            if k < n_random_asr:   # margins from the generation's first token: no pass of their own
                asr, non_refusal, prompts, judgments, m = asr_of(lm.model, lm.tokenizer, suite, targets, seed=seed,
                                                                 drafts=drafts)
                asrs.append(asr)
                non_refusals.append(non_refusal)
                # diff = control - edit: positive means the edit leaves fewer unsafe answers
                compares.append(ev.compare(prompts, edit_j, judgments, seed=seed, pooled=list(targets)))
                # the same on non-refusal (refusal is False), the verdict the non-refusal gap reads
                compares_nr.append(ev.compare(prompts, [j.refusal is False for j in edit_j],
                                              [j.refusal is False for j in judgments], seed=seed,
                                              pooled=list(targets)))
            else:
                with trunk.reuse():
                    m = margin(lm.model, harmful_t)
            margins.append(ev.mean_by_lang(harmful_t, m))
            per_prompt.append(m.double())
    mean = lambda rows: {lang: statistics.fmean(r[lang] for r in rows) for lang in rows[0]} if rows else {}  # noqa: E731
    # the edit's margin against the mean control margin, prompt by prompt (clusters kept)
    control_m = torch.stack(per_prompt).mean(0).tolist() if per_prompt else []
    margin_compare = ev.paired_bootstrap_diff(control_m, edit_m, [p.cluster for p in harmful_t],
                                                    seed=seed) if per_prompt else None
    return {"asr": mean(asrs), "non_refusal": mean(non_refusals), "margin": mean(margins), "draws": n_random,
            "asr_draws": len(asrs), "disjoint": True,
            "per_draw": {"asr": asrs, "non_refusal": non_refusals, "margin": margins},
            "compare_edit_vs_random": compares, "compare_non_refusal_edit_vs_random": compares_nr,
            # diff = edit - control margin (nats), over every target prompt; p: paired bootstrap
            "margin_edit_vs_random": margin_compare}


def _data_report(report: dict) -> dict:
    """The suite's record of its data, without the long id lists of the overlap check."""
    out = {k: v for k, v in report.items() if k != "overlap"}
    overlap = report.get("overlap") or {}
    out["overlap"] = {lang: {k: v for k, v in row.items() if not k.endswith("_ids")} if isinstance(row, dict) else row
                      for lang, row in overlap.items() if lang != "dropped_rows"}
    out["overlap"]["dropped_rows"] = len(overlap.get("dropped_rows", []))
    return out


def response_cache_key(lm: LoadedModel, suite: Suite, fingerprints: Fingerprints | None = None) -> dict | None:
    """What identifies an evaluation's responses before any edit: the model's name and
    fingerprint, the prompts and the generation settings (None when the suite caches nothing)."""
    if not suite.cache_responses:
        return None
    return {"model": lm.name, "base": (fingerprints or Fingerprints(lm.model))(),
            "harmful": [[p.id, p.text] for p in suite.eval_harmful],
            "harmless": [[p.id, p.text] for p in suite.eval_harmless],
            "gen": [suite.max_new_tokens, suite.harmless_max_new_tokens, suite.sort_by_length,
                    suite.batch_size, suite.batch_tokens, suite.decode_rows]}


def cached_evaluation(lm: LoadedModel, suite: Suite, base: dict | None, edit, *, seed: int,
                      progress: bool, keep_harmless_logits: bool = False,
                      drafts: Evaluation | None = None) -> Evaluation:
    """`evaluate`, with the generated responses kept in the cache for suites that ask for it
    (suite.cache_responses: the real models, where generation dominates). The key is
    `base` (response_cache_key of the unedited model) plus the edit's sha256 (or none);
    cached responses are judged again, so a new judge never reuses old verdicts. The cache
    also keeps the full text that committed files cut to 80 characters, and the refusal
    margins of the harmful prompts (a forward pass per prompt: minutes on a real model).
    keep_harmless_logits, drafts: as in `evaluate`, for responses generated here (none from the cache)."""
    if base is None:
        return evaluate(lm, suite, progress=progress, seed=seed, keep_harmless_logits=keep_harmless_logits,
                        drafts=drafts)
    import hashlib
    import json

    from mlsafe.packaged import cache_root
    from mlsafe.results import read_json

    key_src = {**base, "edit": hashlib.sha256(edit.to_bytes()).hexdigest() if edit is not None else None}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_root() / "responses" / lm.name / f"{key}.json"
    # margins depend on the start strings too: kept with a hash of them, reused only on a match
    starts = hashlib.sha256(json.dumps([suite.refusal_starts, suite.comply_starts], sort_keys=True,
                                       ensure_ascii=False).encode()).hexdigest()
    if path.is_file():
        got = read_json(path)
        kept = got.get("margins") if got.get("margin_starts") == starts else None
        res = evaluate(lm, suite, progress=progress, seed=seed, responses=got["responses"],
                       harmless_responses=got["harmless_responses"], margins=kept)
        if kept is None:  # a cache file without these margins: add them
            write_json(path, {**got, "margins": res.margins.tolist(), "margin_starts": starts})
        return res
    res = evaluate(lm, suite, progress=progress, seed=seed, keep_harmless_logits=keep_harmless_logits, drafts=drafts)
    write_json(path, {"key": {k: v for k, v in key_src.items() if k not in ("harmful", "harmless")},
                      "responses": res.responses, "harmless_responses": res.harmless_responses,
                      "margins": res.margins.tolist(), "margin_starts": starts, "timing": res.timing})
    return res


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
    # each seed's goal-table inputs (mlsafe.limits.seed_summaries rebuilds a summary per seed)
    out["per_seed"] = [{**{k: r[k] for k in SEED_GOAL_KEYS if k in r},
                        "random_control": r["edit"]["random_control"]} for r in runs]
    return out


#: The summary blocks of one seed's run that the goal table reads (mlsafe.limits.goal_rows).
SEED_GOAL_KEYS = ("seed", "gap_closed", "gap_closed_by", "kl", "utility", "over_refusal_by_source")


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


def run_key(targets: Sequence[str], preset: str = "paper") -> str:
    """The results folder name of a run: the target key, suffixed "-<preset>" for every preset
    but the paper's (so a preset run never replaces the paper run's results)."""
    if preset not in presets.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets.PRESETS)}")
    return target_key(targets) + ("" if preset == "paper" else f"-{preset}")


def reproduce(lang: str, model: str = DEFAULT_BACKEND, *, device: str = "cpu", seed: int = 0,
              seeds: Sequence[int] = (), data: str = "auto", progress: bool = True, extras: bool = True,
              force: bool = False, preset: str = "paper", **overrides) -> Path:
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
    out_dir = results_dir(model, run_key(targets, preset))
    all_seeds = list(dict.fromkeys([seed, *seeds]))
    defaults = backend_for(model).defaults  # the backend's run policy (mlsafe.backends)
    controls = {k: defaults[k] for k in ("n_random", "n_random_asr") if k in defaults}
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
                               out_dir=stage, loaded=loaded, tag=seed_tag(s, seed), preset=preset,
                               **controls, **overrides)
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
