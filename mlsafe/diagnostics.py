"""The paper's motivating diagnostics (Sec. 3): per-language safety neurons, their overlaps,
and the amplification test, written to ``results/<model>/<lang>/diagnostics.json``.

* Safety neurons per language and per layer (eq. 13-16): for each language L, S(L) =
  S_mag | S_stat from activation moments on L's harmful vs harmless anchor prompts
  (`mlsafe.neurons.safety_neurons_from_moments`; same position and thresholds as the edit).
* Jaccard overlap |S(a) & S(b)| / |S(a) | S(b)| between every language pair (eq. 2), per layer.
* S_mag vs S_stat: their sizes and overlap per language and layer.
* Planted neurons (the organism only): recall and precision of the English set against the
  neurons whose training planted the refusal mechanism.
* Amplification (eq. 1): multiply the outputs a_j of the English safety neurons by alpha
  (`mlsafe.edit.scaled_neurons`) and measure the refusal margin (and ASR) per language.
  Which layers to amplify is OPEN in the paper; the default is the edit layer only.
* Judged amplification (`amplification_asr`, written to amplification_asr.json): the same
  eq. 1 scaling at one layer, with English's S from that layer's moments only (no pass over
  every layer), scored by the suite's judge: ASR with Wilson intervals, non-refusal and
  unclear shares per language and alpha, and each prompt's verdict for paired comparisons.

Nothing here fits an edit: the layer comes from the main run's summary.json (or is given).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mlsafe import arch, neurons, probe, transfer
from mlsafe import evaluate as ev
from mlsafe.edit import scaled_neurons
from mlsafe.evaluate.run import harmful_responses_and_margins
from mlsafe.langs import LANGS, SOURCE, TARGETS, parse_targets, target_key
from mlsafe.prompts import Prompt
from mlsafe.results import read_json, results_dir, write_json
from mlsafe.suites import edit_config, load

DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
SET_NAMES = ("s_mag", "s_stat", "s_safety")


def language_moments(model, tokenizer, harmful: Sequence[Prompt], harmless: Sequence[Prompt],
                     langs: Sequence[str], layers: Sequence[int], *, position: str = "last",
                     batch_size: int = 16) -> dict[str, tuple[dict, dict]]:
    """Per language: (harmful, harmless) activation Moments by layer ({layer: Moments}).

    Languages with fewer than two harmful or two harmless prompts are skipped (the unbiased
    variances of eq. 14-15 need two rows each)."""
    out = {}
    for lang in langs:
        h = [p for p in harmful if p.lang == lang]
        s = [p for p in harmless if p.lang == lang]
        if len(h) < 2 or len(s) < 2:
            continue
        moments = []
        for group in (h, s):
            stats = probe.collect(model, tokenizer, transfer.chat_texts(tokenizer, group), layers,
                                  position=position, what=("activations",), batch_size=batch_size)
            moments.append({layer: stats[layer]["activations"] for layer in layers})
        out[lang] = (moments[0], moments[1])
    return out


def language_sets(moments: dict[str, tuple[dict, dict]], *, tau_mag: float = 2.0,
                  tau_stat: float = 1.0) -> dict[int, dict[str, neurons.NeuronSets]]:
    """{layer: {lang: NeuronSets}} from `language_moments` (eq. 13-16)."""
    out: dict[int, dict[str, neurons.NeuronSets]] = {}
    for lang, (harm, safe) in moments.items():
        for layer in harm:
            out.setdefault(layer, {})[lang] = neurons.safety_neurons_from_moments(
                harm[layer], safe[layer], tau_mag=tau_mag, tau_stat=tau_stat)
    return out


def sets_block(sets: dict[int, dict[str, neurons.NeuronSets]]) -> dict:
    """The JSON-ready sets, sizes, Jaccard matrices (eq. 2) and S_mag/S_stat overlaps."""
    block: dict = {"sets": {}, "sizes": {}, "jaccard": {}, "mag_vs_stat": {}}
    for layer, by_lang in sorted(sets.items()):
        key = str(layer)
        block["sets"][key] = {lang: {name: getattr(ns, name).tolist() for name in SET_NAMES}
                              for lang, ns in by_lang.items()}
        block["sizes"][key] = {lang: {name: int(getattr(ns, name).numel()) for name in SET_NAMES}
                               for lang, ns in by_lang.items()}
        langs, mat = neurons.overlap_matrix({lang: ns.s_safety for lang, ns in by_lang.items()})
        block["jaccard"][key] = {"langs": langs, "matrix": [[_finite(v) for v in row] for row in mat.tolist()]}
        block["mag_vs_stat"][key] = {lang: _finite(neurons.jaccard(ns.s_mag, ns.s_stat))
                                     for lang, ns in by_lang.items()}
    return block


def planted_sets(model) -> dict[int, list[int]] | None:
    """The organism's planted safety neurons {layer: [j, ...]} from `config.mlsafe_planted`, else None."""
    planted = getattr(model.config, "mlsafe_planted", None)
    if not planted:
        return None
    if "layer" in planted and "neurons" in planted:
        return {int(planted["layer"]): [int(j) for j in planted["neurons"]]}
    return {int(k): [int(j) for j in v] for k, v in planted.items()}


def planted_block(planted: dict[int, list[int]], sets: dict[int, dict[str, neurons.NeuronSets]],
                  source: str = SOURCE) -> dict:
    """Recall and precision of each layer's source-language S_safety against the planted neurons."""
    by_layer = {}
    for layer, by_lang in sorted(sets.items()):
        if source not in by_lang:
            continue
        found, true = set(by_lang[source].s_safety.tolist()), set(planted.get(layer, []))
        by_layer[str(layer)] = {"found": len(found), "planted": len(true), "hit": len(found & true),
                                "recall": len(found & true) / len(true) if true else None,
                                "precision": len(found & true) / len(found) if found else None}
    return {"layers": {str(k): v for k, v in planted.items()}, "by_layer": by_layer}


def amplification(model, tokenizer, prompts: Sequence[Prompt], neurons_by_layer: dict[int, torch.Tensor],
                  alphas: Sequence[float], *, margin_kw: dict) -> dict:
    """Eq. 1, margins only: the refusal margin per language with a_j scaled by each alpha
    (`judged_amplification` adds the judge's verdicts).

    Returns {"alphas": [...], "margin": {lang: [per alpha]}, "asr": None}.
    """
    if not alphas:
        raise ValueError("alphas is empty; pass e.g. diagnostics.DEFAULT_ALPHAS")
    langs = ev.metrics.lang_order({p.lang for p in prompts})
    margin = {lang: [] for lang in langs}
    for alpha in alphas:
        with scaled_neurons(model, neurons_by_layer, alpha):
            m = ev.mean_by_lang(prompts, ev.language_margins(model, tokenizer, prompts, **margin_kw))
        for lang in langs:
            margin[lang].append(m[lang])
    return {"alphas": [float(a) for a in alphas], "margin": margin, "asr": None}


def edit_layer(out_dir: Path) -> int:
    """The layer the main run edited (summary.json `edit.layer`)."""
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m mlsafe reproduce` first "
                                "(or pass layer= explicitly)")
    return int(read_json(path)["edit"]["layer"])


def run(model_spec: str, lang: str, *, device: str = "cpu", seed: int = 0, data: str = "auto",
        layer: int | None = None, alphas: Sequence[float] = DEFAULT_ALPHAS, amplify: str = "edit",
        with_asr: bool = True, max_eval_per_lang: int | None = None, out_dir: Path | None = None,
        loaded=None) -> Path:
    """Compute every diagnostic for a model and its suite; write diagnostics.json; return its path.

    layer: where the edit acts (default: read from the main run's summary.json).
    amplify: "edit" scales the English safety neurons at that layer only, "all" at every layer.
    max_eval_per_lang: evaluate amplification on at most that many harmful prompts per language.
    loaded: the (model, suite) pair of mlsafe.suites.load when the caller already holds it.
    """
    if amplify not in ("edit", "all"):
        raise ValueError(f'amplify must be "edit" or "all", got {amplify!r}')
    targets = parse_targets(lang)
    out_dir = Path(out_dir) if out_dir is not None else results_dir(model_spec, target_key(targets))
    layer = edit_layer(out_dir) if layer is None else int(layer)
    t0 = time.perf_counter()
    lm, suite = loaded or load(model_spec, device=device, seed=seed, data=data)
    n_layers = arch.n_layers(lm.model)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    cfg = edit_config(targets, seed, suite)
    layers = list(range(n_layers))
    moments = language_moments(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, LANGS,
                               layers, position=cfg.position, batch_size=cfg.batch_size)
    if SOURCE not in moments:
        raise ValueError(f"the suite has too few {SOURCE} anchors (need >= 2 harmful and 2 harmless)")
    sets = language_sets(moments, tau_mag=cfg.tau_mag, tau_stat=cfg.tau_stat)
    amp_layers = [layer] if amplify == "edit" else layers
    chosen = {k: sets[k][SOURCE].s_safety for k in amp_layers}
    prompts = per_lang(suite.eval_harmful, max_eval_per_lang, seed)
    if with_asr:
        amp = judged_amplification(lm.model, lm.tokenizer, suite, prompts, chosen, alphas, seed=seed)
    else:
        amp = amplification(lm.model, lm.tokenizer, prompts, chosen, alphas,
                            margin_kw=dict(refusal_starts=suite.refusal_starts, comply_starts=suite.comply_starts))
    amp["layers"] = amp_layers
    amp["n_neurons"] = {str(k): int(v.numel()) for k, v in chosen.items()}
    planted = planted_sets(lm.model)
    result = {"model": lm.name, "target_langs": targets, "seed": seed, "layer": layer,
              "n_layers": n_layers, "d_ff": arch.d_ff(lm.model), "position": cfg.position,
              "tau_mag": cfg.tau_mag, "tau_stat": cfg.tau_stat, "langs": list(moments),
              "n_anchors": {lg: {"harmful": h[layer].n, "harmless": s[layer].n} for lg, (h, s) in moments.items()},
              **sets_block(sets),
              "planted": planted_block(planted, sets) if planted else None,
              "amplification": amp, "seconds": time.perf_counter() - t0}
    path = out_dir / "diagnostics.json"
    write_json(path, result)
    return path


def judged_amplification(model, tokenizer, suite, prompts: Sequence[Prompt], neurons_by_layer: dict[int, torch.Tensor],
                         alphas: Sequence[float], *, seed: int = 0) -> dict:
    """Eq. 1 scored by the suite's judge: for each alpha, a_j of `neurons_by_layer` scaled by
    alpha (`mlsafe.edit.scaled_neurons`, weights restored after each), greedy responses with the
    suite's generation settings (`mlsafe.evaluate.run.harmful_responses_and_margins`), the judge's verdicts and
    the refusal margin.

    Returns {"alphas", "langs", "n": {lang: prompts}, "prompt_ids", "prompt_langs", and per metric
    {lang: [per alpha]}: "margin", "asr", "asr_ci" ([lo, hi], Wilson 95 %), "unsafe" (count),
    "non_refusal", "unclear" (share); "verdicts": {alpha: {"unsafe": [...], "refusal": [...]}}
    in prompt order}."""
    if not alphas:
        raise ValueError("alphas is empty; pass e.g. (0.0, 1.0, 4.0)")
    if not prompts:
        raise ValueError("no evaluation prompts to amplify on")
    prompts = list(prompts)
    langs = ev.metrics.lang_order({p.lang for p in prompts})
    keys = ("margin", "asr", "asr_ci", "unsafe", "non_refusal", "unclear")
    out: dict = {"alphas": [float(a) for a in alphas], "langs": langs,
                 "n": {lang: sum(p.lang == lang for p in prompts) for lang in langs},
                 "prompt_ids": [p.id for p in prompts], "prompt_langs": [p.lang for p in prompts],
                 **{k: {lang: [] for lang in langs} for k in keys},
                 "verdicts": {}}
    for alpha in alphas:
        with scaled_neurons(model, neurons_by_layer, alpha):   # margins from the generation's first token
            responses, margins = harmful_responses_and_margins(model, tokenizer, suite, prompts)
        m = ev.mean_by_lang(prompts, margins)
        judgments = suite.judge.judge(prompts, responses)
        table = ev.asr_table(prompts, judgments, seed=seed)
        extra = ev.summary_extra(table)
        for lang in langs:
            row = table.loc[lang]
            out["margin"][lang].append(m[lang])
            out["asr"][lang].append(float(row.asr))
            out["asr_ci"][lang].append([float(row.ci_lo), float(row.ci_hi)])
            out["unsafe"][lang].append(int(row.unsafe))
            out["non_refusal"][lang].append(extra["non_refusal"][lang])
            out["unclear"][lang].append(extra["unclear"][lang]["share"])
        out["verdicts"][str(float(alpha))] = {"unsafe": [bool(j.unsafe) for j in judgments],
                                              "refusal": [j.refusal for j in judgments]}
    return out


def amplification_asr(model_spec: str, *, layer: int, alphas: Sequence[float] = (0.0, 1.0, 4.0),
                      n_per_lang: int | None = 20, device: str = "cpu", seed: int = 0, data: str = "auto",
                      out_dir: Path | None = None, loaded=None) -> Path:
    """Judged ASR per language when English's safety neurons at one layer are scaled by each
    alpha (eq. 1); writes amplification_asr.json (atomic) in out_dir and returns its path.

    Unlike `run`, which needs every layer's sets for the Jaccard tables, this computes the
    activation moments of the English anchors at `layer` only, so English's S (eq. 13-16,
    the suite's edit thresholds and position) is the same set `run` finds there at a
    fraction of the cost. Evaluation: `per_lang(suite.eval_harmful, n_per_lang, seed)`.
    out_dir defaults to results/<model>/diagnostics. loaded: a (model, suite) pair of
    mlsafe.suites.load when the caller already holds it.
    """
    if not alphas:
        raise ValueError("alphas is empty; pass e.g. (0.0, 1.0, 4.0)")
    out_dir = Path(out_dir) if out_dir is not None else results_dir(model_spec, "diagnostics")
    t0 = time.perf_counter()
    lm, suite = loaded or load(model_spec, device=device, seed=seed, data=data)
    n_layers = arch.n_layers(lm.model)
    if not 0 <= int(layer) < n_layers:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    layer = int(layer)
    cfg = edit_config(TARGETS, seed, suite)  # its position, thresholds and batch; targets play no part
    moments = language_moments(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, [SOURCE],
                               [layer], position=cfg.position, batch_size=cfg.batch_size)
    if SOURCE not in moments:
        raise ValueError(f"the suite has too few {SOURCE} anchors (need >= 2 harmful and 2 harmless)")
    s_en = language_sets(moments, tau_mag=cfg.tau_mag, tau_stat=cfg.tau_stat)[layer][SOURCE].s_safety
    t_sets = time.perf_counter()
    prompts = per_lang(suite.eval_harmful, n_per_lang, seed)
    amp = judged_amplification(lm.model, lm.tokenizer, suite, prompts, {layer: s_en}, alphas, seed=seed)
    harm, safe = moments[SOURCE]
    result = {"model": lm.name, "seed": seed, "layer": layer, "n_layers": n_layers, "position": cfg.position,
              "tau_mag": cfg.tau_mag, "tau_stat": cfg.tau_stat,
              "judge": suite.judge.name,
              "max_new_tokens": suite.max_new_tokens, "n_per_lang": n_per_lang,
              "n_anchors_en": {"harmful": harm[layer].n, "harmless": safe[layer].n},
              "neurons": s_en.tolist(), "n_neurons": int(s_en.numel()), **amp,
              "seconds": {"sets": t_sets - t0, "total": time.perf_counter() - t0}}
    path = out_dir / "amplification_asr.json"
    write_json(path, result)
    return path


def per_lang(prompts: Sequence[Prompt], limit: int | None, seed: int = 0) -> list[Prompt]:
    """At most `limit` prompts of each language, a seeded random sample kept in input order
    (all when limit is None). Random rather than the first ones: data sets are often ordered."""
    if limit is None:
        return list(prompts)
    if limit < 1:
        raise ValueError(f"max_eval_per_lang must be >= 1 or None, got {limit}")
    rng = random.Random(seed)
    keep: set[int] = set()
    for lang in dict.fromkeys(p.lang for p in prompts):
        where = [i for i, p in enumerate(prompts) if p.lang == lang]
        keep.update(rng.sample(where, min(limit, len(where))))
    return [p for i, p in enumerate(prompts) if i in keep]


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined overlap (two empty sets) is stored as null."""
    return None if math.isnan(x) else float(x)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mlsafe.diagnostics --model M --layer L [--alphas 0,1,4] [--n-per-lang 20]
    [--data ROOT] [--out DIR]`: the judged amplification (`amplification_asr`) alone."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mlsafe.diagnostics", description=main.__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--layer", type=int, required=True, help="layer whose English safety neurons are scaled")
    ap.add_argument("--alphas", default="0,1,4", help="comma-separated scale factors (eq. 1)")
    ap.add_argument("--n-per-lang", type=int, default=20, help="evaluation prompts per language (seeded sample)")
    ap.add_argument("--data", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None,
                    help="folder of amplification_asr.json (default results/<model>/diagnostics)")
    args = ap.parse_args(argv)
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        ap.error(f"--alphas must be comma-separated numbers, got {args.alphas!r}")
    if not alphas:
        ap.error("--alphas is empty")
    if args.n_per_lang < 1:
        ap.error(f"--n-per-lang must be >= 1, got {args.n_per_lang}")
    path = amplification_asr(args.model, layer=args.layer, alphas=alphas, n_per_lang=args.n_per_lang,
                             device=args.device, seed=args.seed, data=args.data,
                             out_dir=Path(args.out) if args.out else None)
    print(f"[mlsafe] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
