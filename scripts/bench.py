"""`make bench`: the cost ratios of issue 17 that can be measured here in a few minutes, in one run.

Sections (each prints its goal beside the figure; goals are printed, never asserted):

1. solve: the Theorem 4.1 solve at Qwen2.5-7B shapes (d_model 3584, |S| 2048, r 16) against its
   arithmetic floor, one float64 Cholesky of Q plus one triangular solve with |S| right-hand
   sides, timed alternately on the same Gram with the same thread count
   (scripts/bench_solver.solve_vs_floor), for a flat spectrum (pure noise: the solver's worst
   case, its Lanczos step gives up and the exact Gram path runs) and a decaying one. Goal <= 3x.
2. fit: transfer.fit's statistics time over one plain forward pass over the texts they read,
   the same with layer selection, and the whole fit's wall time over that pass (goal <= 1.5),
   on a tiny chat Llama (mlsafe.tiny, random weights, parallel placeholder anchors) for each
   stats_pass / layer_selection.
3. memory: the fit's peak RSS above the process's RSS just before it (Linux: VmHWM after
   resetting it through /proc/self/clear_refs), at two anchor counts, each in a fresh child
   process. Goal: the same peak within max(10 %, 16 MiB) (the statistics are streamed).
4. real model: sections 2-3's figures for qwen2.5-coder-0.5b with a small anchor set and the
   suite's edit defaults, in a child process, when its pip extra is installed and its
   converted weights are cached (otherwise skipped, saying why; never downloads).
5. edit / training: the ratios in results/<MODEL>/<LANG>/cost.json, which `python -m mlsafe baselines --only cost`
   (run just before by `make bench`) writes, when that file exists.
6. generation: on the same real model and GEN_PROMPTS of its target-language harmful evaluation
   prompts (a seeded sample), the margin pass plain (left-padded, input order), by length, and
   by length with the shared template prefix (mlsafe.evaluate.prefix); and greedy generation
   as before (model.generate, 32 rows, no prefix) against the suite's path (the plain greedy
   loop, the shared prefix, its batch size and token budget), with the share of identical
   responses and the largest difference of the first-token log-probabilities; then, with
   each committed edit of DRAFT_EDITS applied (the paper preset's and the best preset's
   LANG=all edits), the suite path decoding against verifying the unedited responses as
   drafts (mlsafe.evaluate.draft).

Writes results/bench/bench.json atomically (mlsafe.results.write_json): every figure, the
machine (CPU count, torch threads, OMP_NUM_THREADS, the load average before each section),
and the torch version. Run with OMP_NUM_THREADS=1 (the Makefile's default) unless thread
scaling is the point.

Usage: python scripts/bench.py [--cost-model organism --cost-lang th [--cost-preset best]] [--ids N] [--no-real]
       [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_solver  # noqa: E402

SOLVE_SHAPE = (3584, 2048, 16)          # Qwen2.5-7B d_model, |S|, r (issue 17)
SOLVE_ROWS, SOLVE_RUNS = 2000, 3
MEMORY_TOPICS = (48, 192)               # anchor counts (parallel ids x 3 languages) of section 3
MEMORY_TOLERANCE = (0.10, 16.0)         # relative, MiB: "same peak" if within the larger
MEMORY_REPEATS = 3                      # fresh processes per anchor count (one run's peak moves by ~10 MiB)
REAL_MODEL, REAL_IDS, REAL_TARGETS = "qwen2.5-coder-0.5b", 4, ("th",)   # 4 ids: 1 for validation
GEN_PROMPTS, GEN_OLD_BATCH = 128, 32    # section 6: prompts, and the batch of the path before issue 17's work
DRAFT_EDITS = ("all", "all-best")       # section 6: committed edits (results/<model>/<run>/) for the draft path
CHILD_TAG = "BENCH_CHILD "
GOALS = {"solve_over_floor": 3.0, "fit_over_forward": 1.5, "edit_over_training": 10.0}


# ----------------------------------------------------------------------------- memory
def _status_mib(key: str) -> float | None:
    """A VmRSS / VmHWM line of /proc/self/status in MiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_during(fn) -> tuple[object, dict]:
    """(fn(), memory) with memory = RSS before, peak RSS during fn, and their difference in MiB.

    Where the peak cannot be reset (no /proc/self/clear_refs), the peak is the process's
    lifetime maximum (ru_maxrss) and `peak_reset` is False: then the difference is an upper
    bound of the fit's own peak."""
    before = _status_mib("VmRSS")
    reset = before is not None and _reset_peak()
    out = fn()
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    before = before if before is not None else 0.0
    return out, {"rss_before_mib": before, "peak_mib": peak, "peak_above_before_mib": peak - before,
                 "peak_reset": reset}


def same_peak(a: float, b: float, tolerance=MEMORY_TOLERANCE) -> bool:
    """Whether two peak increments agree within max(relative * larger, absolute MiB)."""
    rel, absolute = tolerance
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), absolute)


# ----------------------------------------------------------------------------- children
def _tiny_fit_setup(topics: int):
    from mlsafe import tiny, transfer

    tok = tiny.build_tokenizer("llama")
    model = tiny.build_model("llama", tok, seed=0, hidden=256, layers=4, d_ff=1024)
    harmful, harmless = bench_solver.synthetic_anchors(topics)
    cfg = transfer.EditConfig(targets=["th", "bn"], rank=4, tau_mag=1.0, tau_stat=0.5, val_fraction=0.25,
                              stats_pass="fused", layer_selection="predicted")
    return model, tok, harmful, harmless, cfg


def child_memory(topics: int) -> dict:
    """Section 3 in this process: the fused/predicted fit's peak RSS on the tiny model."""
    from mlsafe import transfer

    import scipy.linalg  # noqa: F401  (the solver's Gram path imports it: not the fit's memory)

    torch.manual_seed(0)
    model, tok, harmful, harmless, cfg = _tiny_fit_setup(topics)
    margin = bench_solver.token_margin(tok)
    t0 = time.perf_counter()
    (_, report), mem = peak_during(lambda: transfer.fit(model, tok, harmful, harmless, cfg, margin=margin))
    return {"topics": topics, "harmful_anchors": len(harmful), "harmless_anchors": len(harmless),
            "fit_seconds": time.perf_counter() - t0, "layer": report.layer, **mem}


def real_model_status(spec: str = REAL_MODEL) -> str | None:
    """None when `spec`'s extra is installed and its float weights are cached, else why not."""
    from mlsafe import backends, packaged

    backend = backends.get_backend(spec)
    if backend is None:
        return f"{spec} is not a registered backend"
    if not backends.extra_installed(backend):
        return f"its pip extra [{backend.defaults.get('extra')}] is not installed"
    pkg = backend.defaults.get("packaged")
    if pkg and not (packaged.cache_dir(getattr(packaged, pkg)) / "base").is_dir():
        return f"its converted weights are not cached under {packaged.cache_dir(getattr(packaged, pkg))}"
    return None


def small_anchor_set(harmful, harmless, n_ids: int, langs) -> tuple[list, list]:
    """The first `n_ids` parallel ids (in list order) whose harmful rows exist in every language
    of `langs`, those rows, and the harmless rows of the first `n_ids` harmless ids in `langs`."""
    langs = set(langs)
    by_id: dict[str, set[str]] = {}
    for p in harmful:
        by_id.setdefault(p.parallel_id, set()).add(p.lang)
    keep = [i for i in dict.fromkeys(p.parallel_id for p in harmful) if langs <= by_id[i]][:n_ids]
    safe_ids = [i for i in dict.fromkeys(p.parallel_id for p in harmless if p.lang in langs)][:n_ids]
    if len(keep) < n_ids or len(safe_ids) < n_ids:
        raise ValueError(f"need {n_ids} parallel ids in {sorted(langs)}, found {len(keep)} harmful and "
                         f"{len(safe_ids)} harmless")
    keep_set, safe_set = set(keep), set(safe_ids)
    return ([p for p in harmful if p.parallel_id in keep_set and p.lang in langs],
            [p for p in harmless if p.parallel_id in safe_set and p.lang in langs])


def child_real(spec: str, n_ids: int, targets: tuple[str, ...]) -> dict:
    """Section 4 in this process: plain forward, then the suite's default fit, with its peak RSS."""
    from mlsafe import pipeline, transfer

    t0 = time.perf_counter()
    lm, suite = pipeline.load(spec)
    load_s = time.perf_counter() - t0
    cfg = pipeline.edit_config(list(targets), 0, suite)
    harmful, harmless = small_anchor_set(suite.anchors_harmful, suite.anchors_harmless, n_ids,
                                         (cfg.source, *targets))
    margin = pipeline.margin_fn(suite, lm.tokenizer)
    variant = ((cfg.stats_pass, cfg.layer_selection),)
    fits, mem = peak_during(lambda: bench_solver.fit_vs_forward(
        lm.model, lm.tokenizer, harmful, harmless, cfg, margin, variants=variant,
        title=f"{spec} ({n_ids} parallel ids, targets {','.join(targets)}, {len(cfg.candidate_layers or [])} "
              f"candidate layers, {torch.get_num_threads()} thread(s))"))
    return {"model": spec, "parallel_ids": n_ids, "targets": list(targets), "harmful_anchors": len(harmful),
            "harmless_anchors": len(harmless), "load_seconds": load_s, "fits": fits, "memory": mem}


def child_generation(spec: str, n: int = GEN_PROMPTS) -> dict:
    """Section 6 in this process (its docstring entry in the module's)."""
    import random

    from mlsafe import pipeline
    from mlsafe.evaluate.generate import generate_scored
    from mlsafe.evaluate.margin import language_token_sets, next_token_logprobs, union_ids

    lm, suite = pipeline.load(spec)
    prompts = [p for p in suite.eval_harmful if p.lang != "en"]
    random.Random(0).shuffle(prompts)
    prompts = prompts[:n]
    texts = [p.text for p in prompts]
    ids = union_ids(language_token_sets(lm.tokenizer, [p.lang for p in prompts], refusal_starts=suite.refusal_starts,
                                        comply_starts=suite.comply_starts))
    margins = {}
    for name, kw in (("plain", dict(share_prefix=False, sort_by_length=False)),
                     ("by_length", dict(share_prefix=False)), ("by_length_prefix", {})):
        t0 = time.perf_counter()
        lp = next_token_logprobs(lm.model, lm.tokenizer, texts, ids, **kw)
        margins[name] = {"seconds": time.perf_counter() - t0, "logp": lp}
    gen = {}
    for name, kw in (("before", dict(batch_size=GEN_OLD_BATCH, share_prefix=False, greedy_loop=False)),
                     ("suite", dict(batch_size=suite.batch_size, batch_tokens=suite.batch_tokens))):
        st: dict = {}
        texts_out, lp = generate_scored(lm.model, lm.tokenizer, texts, ids, max_new_tokens=suite.max_new_tokens,
                                        progress=False, sort_by_length=True, stats=st, **kw)
        gen[name] = {"seconds": st["seconds"], "new_tokens": st["new_tokens"], "texts": texts_out, "logp": lp}
    edited = {}
    for run in DRAFT_EDITS:   # an edited model: decoded by the suite path, then verifying drafts
        path = ROOT / "results" / spec / run / "edit.safetensors"
        if not path.is_file():
            edited[run] = {"skipped": f"no {path.relative_to(ROOT)}"}
            continue
        from mlsafe.edit import SparseEdit

        row = {}
        with SparseEdit.load(path).applied(lm.model):
            for name, drafts in (("decoded", None), ("drafts", gen["suite"]["texts"])):
                st = {}
                out_texts, lp = generate_scored(lm.model, lm.tokenizer, texts, ids, max_new_tokens=suite.max_new_tokens,
                                                progress=False, sort_by_length=True, stats=st, drafts=drafts,
                                                batch_size=suite.batch_size, batch_tokens=suite.batch_tokens)
                row[name] = {**st, "texts": out_texts, "logp": lp}
        d = row["drafts"]
        edited[run] = {"decoded_seconds": row["decoded"]["seconds"], "draft_seconds": d["seconds"],
                       "drafted": d.get("drafted"), "draft_done": d.get("draft_done"),
                       "unchanged_by_edit": sum(a == b for a, b in zip(row["decoded"]["texts"], gen["suite"]["texts"])) / n,
                       "same_responses": sum(a == b for a, b in zip(row["decoded"]["texts"], d["texts"])) / n,
                       "first_logp_max_abs_diff": float((row["decoded"]["logp"] - d["logp"]).abs().max())}
    ref = margins["plain"]["logp"]
    return {"model": spec, "prompts": n, "max_new_tokens": suite.max_new_tokens, "edited": edited,
            "batch_size": suite.batch_size, "batch_tokens": suite.batch_tokens,
            "margin_seconds": {k: v["seconds"] for k, v in margins.items()},
            "margin_max_abs_diff": max(float((v["logp"] - ref).abs().max()) for v in margins.values()),
            "generation": {k: {"seconds": v["seconds"], "new_tokens": v["new_tokens"],
                               "tokens_per_second": v["new_tokens"] / v["seconds"]} for k, v in gen.items()},
            "same_responses": sum(a == b for a, b in zip(gen["before"]["texts"], gen["suite"]["texts"])) / n,
            "first_logp_max_abs_diff": float((gen["before"]["logp"] - gen["suite"]["logp"]).abs().max())}


def run_child(args: list[str], timeout: float) -> dict:
    """Run this script with `args` in a fresh process; its result (the CHILD_TAG line) or
    {"error": ...} with the tail of its output."""
    try:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


# ----------------------------------------------------------------------------- sections
def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def goal_text(value: float, goal: float, *, higher_is_better: bool = False) -> str:
    met = value >= goal if higher_is_better else value <= goal
    return f"(goal {'>=' if higher_is_better else '<='} {goal:g}: {'met' if met else 'NOT met'})"


def section_solve() -> list[dict]:
    d, m, r = SOLVE_SHAPE
    print(f"\n== 1. solve vs floor at Qwen2.5-7B shapes (Gram from {SOLVE_ROWS} rows, median of {SOLVE_RUNS}, "
          f"{torch.get_num_threads()} thread(s))")
    print(bench_solver.SOLVE_HEADER)
    rows = []
    for spectrum in bench_solver.SPECTRA:
        res = bench_solver.solve_vs_floor(d, m, r, rows=SOLVE_ROWS, runs=SOLVE_RUNS,
                                          threads=torch.get_num_threads(), spectrum=spectrum)
        print(bench_solver.solve_row(res), goal_text(res["solve_over_floor"], GOALS["solve_over_floor"]),
              flush=True)
        rows.append(res)
    return rows


def section_fit() -> list[dict]:
    from mlsafe import tiny, transfer

    print("\n== 2. fit statistics (+ layer selection) / one plain forward pass")
    tok = tiny.build_tokenizer("llama")
    lm = tiny.build_model("llama", tok, seed=0, hidden=128, layers=6, d_ff=256)
    harmful, harmless = bench_solver.synthetic_anchors(48)
    cfg = transfer.EditConfig(targets=["th", "bn"], rank=4, tau_mag=1.0, tau_stat=0.5, val_fraction=0.25)
    fits = bench_solver.fit_vs_forward(lm, tok, harmful, harmless, cfg, bench_solver.token_margin(tok),
                                       title="tiny chat Llama (d_model 128, 6 layers, 48 parallel anchors x 3 "
                                             "languages)")
    best = min(fits, key=lambda f: f["fit_over_forward"])
    print(f"best whole fit / forward: {best['fit_over_forward']:.2f} ({best['stats_pass']}/{best['layer_selection']})",
          goal_text(best["fit_over_forward"], GOALS["fit_over_forward"]))
    return fits


def section_memory() -> dict:
    print(f"\n== 3. fit peak RSS vs anchor count (tiny Llama d_model 256, fused/predicted, fresh process each, "
          f"median of {MEMORY_REPEATS})")
    runs, medians = [], []
    for topics in MEMORY_TOPICS:
        reps = []
        for _ in range(MEMORY_REPEATS):
            res = run_child(["--child", "memory", "--topics", str(topics)], timeout=600)
            if "error" in res:
                raise RuntimeError(f"memory child ({topics} topics) failed: {res['error']}")
            reps.append(res)
        runs += reps
        peaks = [r["peak_above_before_mib"] for r in reps]
        medians.append(statistics.median(peaks))
        res = reps[0]
        print(f"{res['harmful_anchors']:>5} harmful + {res['harmless_anchors']:>5} harmless anchors: "
              f"RSS before {res['rss_before_mib']:.0f} MiB, fit peak above before "
              f"{' / '.join(f'{p:.1f}' for p in peaks)} MiB, median {medians[-1]:.1f} "
              f"({statistics.median(r['fit_seconds'] for r in reps):.1f} s)", flush=True)
    a, b = medians[0], medians[-1]
    flat = same_peak(a, b)
    rel, absolute = MEMORY_TOLERANCE
    print(f"{MEMORY_TOPICS[-1] // MEMORY_TOPICS[0]}x the anchors: fit peak {a:.1f} -> {b:.1f} MiB "
          f"(goal: same within max({rel:.0%}, {absolute:g} MiB): {'met' if flat else 'NOT met'})")
    return {"runs": runs, "median_peak_above_before_mib": medians, "same_peak": flat,
            "tolerance": {"relative": rel, "mib": absolute}}


def section_real(enabled: bool, n_ids: int = REAL_IDS) -> dict:
    print(f"\n== 4. real model: {REAL_MODEL} ({n_ids} parallel anchor ids)")
    why = "--no-real given" if not enabled else real_model_status()
    if why:
        print(f"skipped: {why}")
        return {"skipped": why}
    res = run_child(["--child", "real", "--model", REAL_MODEL, "--ids", str(n_ids),
                     "--targets", ",".join(REAL_TARGETS)], timeout=1200)
    if "error" in res:
        print(f"failed: {res['error']}")
        return {"skipped": f"failed: {res['error']}"}
    f, mem = res["fits"][0], res["memory"]
    print(f"loaded in {res['load_seconds']:.1f} s; {res['harmful_anchors']} harmful + {res['harmless_anchors']} "
          f"harmless anchors; plain forward {f['forward_seconds']:.1f} s; fit {f['fit_seconds']:.1f} s "
          f"(layer {f['layer']})")
    print(f"statistics / forward {f['statistics_over_forward']:.2f}; with selection "
          f"{f['with_selection_over_forward']:.2f}; whole fit {f['fit_over_forward']:.2f} "
          f"{goal_text(f['fit_over_forward'], GOALS['fit_over_forward'])}")
    print("fit stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in f["stage_seconds"].items())
          + "  (solve = build_edit per candidate layer, its weight fingerprint included)")
    print(f"fit peak RSS {mem['peak_mib']:.0f} MiB, {mem['peak_above_before_mib']:.0f} MiB above the loaded model's "
          f"{mem['rss_before_mib']:.0f} MiB")
    return res


def section_cost(model: str | None, lang: str | None, preset: str = "paper") -> dict:
    from mlsafe.langs import parse_targets
    from mlsafe.pipeline import run_key
    from mlsafe.results import read_json, results_dir

    print("\n== 5. edit vs training (python -m mlsafe baselines --only cost)")
    if not model:
        print("skipped: no --cost-model given")
        return {"skipped": "no --cost-model given"}
    path = results_dir(model, run_key(parse_targets(lang or "th"), preset)) / "cost.json"
    if not path.exists():
        print(f"skipped: {path} does not exist (run python -m mlsafe baselines --model {model} --lang {lang} "
              f"--only cost --preset {preset})")
        return {"skipped": f"{path} does not exist"}
    c = read_json(path)
    shown = path.resolve().relative_to(ROOT) if ROOT in path.resolve().parents else path
    out = {"path": str(shown),
           "training_over_edit_seconds": c["ratio_seconds"], "training_over_edit_flops": c["ratio_flops"],
           "reached": c["reached"], "edit_seconds": c["edit"]["seconds"], "train_seconds": c["train"]["seconds"],
           "edit_flops": c["edit"]["flops"], "train_flops": c["train"]["flops"]}
    bound = "" if c["reached"] else " (lower bound: training never reached the edit's ASR)"
    print(f"{out['path']}: edit {out['edit_seconds']:.2f} s / {out['edit_flops']:.3g} FLOPs, training "
          f"{out['train_seconds']:.2f} s / {out['train_flops']:.3g} FLOPs{bound}")
    for key in ("training_over_edit_seconds", "training_over_edit_flops"):
        print(f"{key.replace('_', ' ')}: {out[key]:.2f}x",
              goal_text(out[key], GOALS["edit_over_training"], higher_is_better=True))
    return out


def section_generation(enabled: bool) -> dict:
    print(f"\n== 6. generation and margin passes: {REAL_MODEL} ({GEN_PROMPTS} target-language harmful prompts)")
    why = "--no-real given" if not enabled else real_model_status()
    if why:
        print(f"skipped: {why}")
        return {"skipped": why}
    res = run_child(["--child", "gen", "--model", REAL_MODEL], timeout=1800)
    if "error" in res:
        print(f"failed: {res['error']}")
        return {"skipped": f"failed: {res['error']}"}
    m, g = res["margin_seconds"], res["generation"]
    print(f"margin pass: plain {m['plain']:.1f} s, by length {m['by_length']:.1f} s, + shared prefix "
          f"{m['by_length_prefix']:.1f} s ({m['plain'] / m['by_length_prefix']:.2f}x); "
          f"largest |log p| difference {res['margin_max_abs_diff']:.1e}")
    b, f = g["before"], g["suite"]
    print(f"generation ({res['max_new_tokens']} new tokens): generate(), {GEN_OLD_BATCH} rows, no prefix "
          f"{b['seconds']:.1f} s ({b['tokens_per_second']:.0f} tokens/s); greedy loop + prefix, {res['batch_size']} "
          f"rows / {res['batch_tokens']} tokens {f['seconds']:.1f} s ({f['tokens_per_second']:.0f} tokens/s): "
          f"{b['seconds'] / f['seconds']:.2f}x; identical responses {res['same_responses']:.1%}, largest first-token "
          f"|log p| difference {res['first_logp_max_abs_diff']:.1e}")
    for run, e in res.get("edited", {}).items():
        if "skipped" in e:
            print(f"edited ({run}): skipped, {e['skipped']}")
            continue
        print(f"edited ({run}; {e['unchanged_by_edit']:.0%} of responses unchanged by the edit): decoded "
              f"{e['decoded_seconds']:.1f} s, verifying the unedited responses as drafts {e['draft_seconds']:.1f} s "
              f"({e['decoded_seconds'] / e['draft_seconds']:.2f}x; {e['draft_done']} of {e['drafted']} verified rows "
              f"finished by their draft); identical responses {e['same_responses']:.1%}, largest first-token "
              f"|log p| difference {e['first_logp_max_abs_diff']:.1e}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "bench.json")
    ap.add_argument("--cost-model", help="read results/<model>/<lang>/cost.json for section 5")
    ap.add_argument("--cost-lang", default="th")
    ap.add_argument("--cost-preset", default="paper", help="the preset of that cost.json (mlsafe.presets)")
    ap.add_argument("--no-real", action="store_true", help=f"skip section 4 ({REAL_MODEL})")
    ap.add_argument("--child", choices=("memory", "real", "gen"), help=argparse.SUPPRESS)
    ap.add_argument("--topics", type=int, default=MEMORY_TOPICS[0], help=argparse.SUPPRESS)
    ap.add_argument("--model", default=REAL_MODEL, help=argparse.SUPPRESS)
    ap.add_argument("--ids", type=int, default=REAL_IDS,
                    help=f"parallel anchor ids of section 4 (default {REAL_IDS}: fixed costs weigh more "
                         "at few anchors; a larger count measures the ratio nearer a real run's)")
    ap.add_argument("--targets", default=",".join(REAL_TARGETS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
    if args.child == "memory":
        print(CHILD_TAG + json.dumps(child_memory(args.topics)), flush=True)
        return 0
    if args.child == "gen":
        print(CHILD_TAG + json.dumps(child_generation(args.model)), flush=True)
        return 0
    if args.child == "real":
        print(CHILD_TAG + json.dumps(child_real(args.model, args.ids, tuple(args.targets.split(",")))), flush=True)
        return 0

    from mlsafe.results import write_json

    t_start = time.perf_counter()
    info = machine()
    print(f"[bench] {info['cpu_count']} CPU cores, {info['torch_threads']} torch thread(s), "
          f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']}, torch {info['torch']}, load {load_average()}")
    loads, seconds, out = {}, {}, {"machine": info}
    for name, run in (("solve", section_solve), ("fit", section_fit), ("memory", section_memory),
                      ("real_model", lambda: section_real(not args.no_real, args.ids)),
                      ("edit_vs_training", lambda: section_cost(args.cost_model, args.cost_lang, args.cost_preset)),
                      ("generation", lambda: section_generation(not args.no_real))):
        loads[name] = load_average()
        t0 = time.perf_counter()
        out[name] = run()
        seconds[name] = time.perf_counter() - t0
    out["load_average_before"] = loads
    out["section_seconds"] = seconds
    out["goals"] = GOALS
    write_json(args.out, out)
    print(f"\n[bench] {time.perf_counter() - t_start:.0f} s in all; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
