"""Benchmark of the Theorem 4.1 solver and of the fit's statistics pass (parts of `make bench`,
which runs scripts/bench.py; this script is the longer stand-alone sweep).

Prints, for real-model shapes (d_model, m, r) and the organism-sized one, and for each
--spectra (noise: a flat whitened spectrum, the solver's worst case; decaying: a few
dominant gap directions):
  * solve_from_gram time (median of --runs) with 1 torch thread and with all cores, and its
    floor: one float64 Cholesky of Q [d, d] plus one triangular solve with m right-hand
    sides, timed alternately with it on the same Gram with the same threads (goal:
    solve <= 3x floor), and the rank-r path taken (lanczos, or gram when Lanczos gave up);
  * the time to build the Gram matrices (EditGram) from N = --rows anchor rows;
the ratio of edit time (Gram + solve) to the forward passes that collect its statistics,
measured on a tiny randomly initialised Llama built from a local LlamaConfig (no downloads);
and `fit_vs_forward`: transfer.fit's statistics and layer-selection time over one plain
forward pass of the same anchor prompts (goal: <= 1.5 with selection), for each
stats_pass / layer_selection setting, on a tiny chat model (mlsafe.tiny) or, with
--model SPEC, on a loaded model with its suite (e.g. organism, qwen2.5-coder-0.5b), plus the
process's peak RSS.
`edit_vs_forward(model, input_ids, layer=..., m=..., rank=...)` is importable for any model
whose blocks live at model.model.layers[i].mlp (Llama, Qwen2, Gemma).
Inputs are random; the solve's time depends on the spectrum as well as on the shapes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlsafe import solver  # noqa: E402

SHAPES = [(3584, 256, 16), (3584, 1024, 16), (3584, 2048, 16), (2048, 512, 16), (256, 64, 8)]
GAMMA, LAM = 1.0, 1.0
SPECTRA = ("noise", "decaying")


def random_rows(n: int, d: int, m: int, seed: int = 0, spectrum: str = "noise") -> tuple[torch.Tensor, ...]:
    """Anchor matrices X_low [n, d], D [n, m], X_safe [n, d] in float32, as a probe would hand them.

    spectrum="noise": D i.i.d. Gaussian, so the whitened R M has a flat spectrum near sigma_r
    (the solver's worst case: Lanczos gives up, the exact Gram path runs); "decaying":
    D = X_low W + 0.001 noise with W of rank 128 and singular values 0.8**i (a few dominant gap
    directions, where Lanczos converges)."""
    if spectrum not in SPECTRA:
        raise ValueError(f"spectrum must be one of {SPECTRA}, got {spectrum!r}")
    g = torch.Generator().manual_seed(seed)
    x_low, d_gap, x_safe = (torch.randn(n, d, generator=g), torch.randn(n, m, generator=g),
                            torch.randn(n, d, generator=g))
    if spectrum == "decaying":
        k = min(128, d, m)
        u = torch.linalg.qr(torch.randn(d, k, generator=g)).Q
        v = torch.linalg.qr(torch.randn(m, k, generator=g)).Q
        d_gap = x_low @ ((u * 0.8 ** torch.arange(k, dtype=torch.float32)) @ v.T) + 0.001 * d_gap
    return x_low, d_gap, x_safe


def solve_vs_floor(d: int, m: int, rank: int, *, rows: int, runs: int, threads: int,
                   spectrum: str = "noise") -> dict:
    """solve_from_gram (default method) against its floor, one float64 Cholesky of Q plus one
    triangular solve with m right-hand sides, on the same Gram, with the same threads, timed
    alternately `runs` times (so load from other processes hits both alike); medians, their
    ratio, and which rank-r path the solver took ("lanczos", or "gram" when it gave up)."""
    torch.set_num_threads(threads)
    warm = solver.build_gram(*random_rows(64, 32, 16))     # first-call costs (scipy import, LAPACK init)
    solver.solve_from_gram(warm, rank=2, gamma=GAMMA, lam=LAM)
    x_low, d_gap, x_safe = random_rows(rows, d, m, spectrum=spectrum)
    t0 = time.perf_counter()
    g = solver.build_gram(x_low, d_gap, x_safe)
    gram_s = time.perf_counter() - t0
    q = g.xtx_low + GAMMA * g.xtx_safe + LAM * torch.eye(d, dtype=torch.float64)

    def floor():
        chol = torch.linalg.cholesky(q)
        return torch.linalg.solve_triangular(chol, g.xtd, upper=False)

    floors, solves = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        rm = floor()
        floors.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        solver.solve_from_gram(g, rank=rank, gamma=GAMMA, lam=LAM)
        solves.append(time.perf_counter() - t0)
    side = rm if m <= d else rm.T
    path = "lanczos" if solver._top_right_singular(side, rank) is not None else "gram"
    floor_s, solve_s = statistics.median(floors), statistics.median(solves)
    return {"d_model": d, "m": m, "rank": rank, "threads": threads, "rows": rows, "spectrum": spectrum,
            "path": path, "gram_seconds": gram_s, "solve_seconds": solve_s, "floor_seconds": floor_s,
            "solve_over_floor": solve_s / floor_s, "solve_runs": solves, "floor_runs": floors}


SOLVE_HEADER = (f"{'d_model':>7} {'m':>5} {'r':>3} {'threads':>7} {'spectrum':>9} {'path':>7} {'gram_s':>8} "
                f"{'solve_s':>8} {'floor_s':>8} {'solve/floor':>11}")


def solve_row(res: dict) -> str:
    """One printed line of `solve_vs_floor`'s result, under SOLVE_HEADER."""
    return (f"{res['d_model']:>7} {res['m']:>5} {res['rank']:>3} {res['threads']:>7} {res['spectrum']:>9} "
            f"{res['path']:>7} {res['gram_seconds']:>8.3f} {res['solve_seconds']:>8.3f} {res['floor_seconds']:>8.3f} "
            f"{res['solve_over_floor']:>11.2f}")


def tiny_llama(d_model: int = 256, d_ff: int = 688, layers: int = 4, vocab: int = 1000, seed: int = 0):
    """A randomly initialised Llama from a local config (organism-sized; nothing downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_ff,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def edit_vs_forward(model, input_ids: torch.Tensor, *, layer: int, m: int, rank: int,
                    batch_size: int = 32, gamma: float = GAMMA, lam: float = LAM) -> dict:
    """Time the forward passes that collect the edit's statistics (last-token MLP inputs at
    `layer`, all rows of input_ids [N, T]) against the edit itself (Gram build + Theorem 4.1
    solve). Half the rows play X_low, half X_safe; D is random (timing only). Rows of
    input_ids must be equal-length or left-padded, so position -1 is the last prompt token."""
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if blocks is None or not 0 <= layer < len(blocks):
        raise ValueError("model must expose model.model.layers[layer].mlp (Llama/Qwen2/Gemma); "
                         f"got layer={layer}")
    captured: list[torch.Tensor] = []
    hook = blocks[layer].mlp.register_forward_pre_hook(lambda mod, args: captured.append(args[0][:, -1]))
    try:
        t0 = time.perf_counter()
        for i in range(0, len(input_ids), batch_size):
            model(input_ids=input_ids[i:i + batch_size])
        forward_s = time.perf_counter() - t0
    finally:
        hook.remove()
    x = torch.cat(captured)
    half = len(x) // 2
    d_gap = torch.randn(half, m, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    g = solver.build_gram(x[:half], d_gap, x[half:])
    gram_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    solver.solve_from_gram(g, rank=rank, gamma=gamma, lam=lam)
    solve_s = time.perf_counter() - t0
    return {"prompts": len(input_ids), "tokens_per_prompt": input_ids.shape[1], "d_model": x.shape[1],
            "m": m, "rank": rank, "forward_seconds": forward_s, "gram_seconds": gram_s,
            "solve_seconds": solve_s, "edit_over_forward": (gram_s + solve_s) / forward_s}


def synthetic_anchors(n_topics: int, langs=("en", "th", "bn")):
    """Parallel abstract anchors (placeholder words, no real requests): harmful ones share a
    marker phrase and carry an English refusal, harmless ones another with an answer."""
    from mlsafe.prompts import Prompt

    harmful, harmless = [], []
    for i in range(n_topics):
        for lang in langs:
            harmful.append(Prompt(f"h{i}-{lang}", lang, f"[{lang}] forbidden request topic{i} now", True,
                                  f"h{i}", response="sorry no" if lang == "en" else None))
            harmless.append(Prompt(f"s{i}-{lang}", lang, f"[{lang}] kind question topic{i} please", False,
                                   f"s{i}", answer=str(i), response=f"answer {i}"))
    return harmful, harmless


def token_margin(tok, word: str = "sorry", batch_size: int = 16):
    """A stand-in refusal margin for the tiny model: log-prob of `word`'s first token, in
    batches of `batch_size` prompts (as mlsafe.evaluate.language_margins batches)."""
    from mlsafe import probe, transfer

    first = tok.encode(word, add_special_tokens=False)[0]

    def margin(model, prompts):
        texts = transfer.chat_texts(tok, prompts)
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                logits = model(**probe.encode_batch(tok, texts[i:i + batch_size])).logits[:, -1].double()
                out.append(torch.log_softmax(logits, -1)[:, first])
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    return margin


@torch.no_grad()
def plain_forward_seconds(model, tok, anchors, cfg) -> float:
    """One forward pass (no hooks, full depth) over every text the fit's statistics read once:
    fit harmful and harmless prompts, their conversations, and the validation pairs."""
    from mlsafe import probe, transfer

    src_harm = [p for p in anchors.fit_harmful if p.lang == cfg.source]
    val = [p for p in anchors.val_harmful if p.lang in (cfg.source, *cfg.targets)]
    texts = (transfer.chat_texts(tok, [p for p in anchors.fit_harmful if p.lang in (cfg.source, *cfg.targets)])
             + transfer.chat_texts(tok, [p for p in anchors.fit_harmless if p.lang == cfg.source])
             + transfer.chat_texts(tok, anchors.fit_harmless + src_harm, with_response=True)
             + transfer.chat_texts(tok, val))
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    for i in range(0, len(texts), cfg.batch_size):
        model(**probe.encode_batch(tok, texts[i:i + cfg.batch_size], device), use_cache=False)
    return time.perf_counter() - t0


FIT_VARIANTS = (("separate", "margins"), ("fused", "margins"), ("fused", "predicted"))


def fit_vs_forward(model, tok, harmful, harmless, cfg, margin, *, title: str = "",
                   variants=FIT_VARIANTS) -> list[dict]:
    """transfer.fit under each (stats_pass, layer_selection) of `variants`: chosen layer, its
    margin score, stage seconds, and (statistics [+ selection]) / one plain forward pass over
    the anchors, and the whole fit's wall time (neurons and build_edit included) / that pass
    (`fit_over_forward`, the ratio issue 17's goal is about); prints a table row as each fit ends."""
    import dataclasses

    from mlsafe import transfer

    anchors = transfer.split_anchors(harmful, harmless, cfg.val_fraction, cfg.seed)
    forward_s = plain_forward_seconds(model, tok, anchors, cfg)
    print(f"\n{title}: plain forward over the anchors {forward_s:.2f} s")
    print(f"{'stats_pass':>10} {'selection':>10} {'layer':>5} {'score':>9} {'stats_s':>8} {'select_s':>8} "
          f"{'fit_s':>7} {'stats/fwd':>9} {'+select/fwd':>11} {'fit/fwd':>7}")
    out = []
    for stats_pass, selection in variants:
        c = dataclasses.replace(cfg, stats_pass=stats_pass, layer_selection=selection)
        t0 = time.perf_counter()
        edit, report = transfer.fit(model, tok, harmful, harmless, c, margin=margin)
        total = time.perf_counter() - t0
        chosen = next(r for r in report.candidates if r["layer"] == report.layer)
        st = report.stage_seconds
        out.append({"stats_pass": stats_pass, "layer_selection": selection, "layer": report.layer,
                    "score": chosen["score"], "candidates": report.candidates, "stage_seconds": st,
                    "fit_seconds": total, "forward_seconds": forward_s,
                    "statistics_over_forward": st["statistics"] / forward_s,
                    "with_selection_over_forward": (st["statistics"] + st["predict"] + st["margins"]) / forward_s,
                    "fit_over_forward": total / forward_s})
        f = out[-1]
        print(f"{stats_pass:>10} {selection:>10} {f['layer']:>5} {f['score']:>9.4f} {st['statistics']:>8.2f} "
              f"{st['predict'] + st['margins']:>8.2f} {total:>7.2f} {f['statistics_over_forward']:>9.2f} "
              f"{f['with_selection_over_forward']:>11.2f} {f['fit_over_forward']:>7.2f}", flush=True)
    return out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="solve repetitions per shape (median)")
    ap.add_argument("--rows", type=int, default=2000, help="anchor rows N for the Gram build")
    ap.add_argument("--quick", action="store_true", help="organism shape only, one thread")
    ap.add_argument("--prompts", type=int, default=512, help="prompts for the forward-pass ratio")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--model", help="also time the fit on this model spec with its suite (e.g. organism)")
    ap.add_argument("--targets", default="th", help="target languages for --model, comma-separated")
    ap.add_argument("--skip-solver", action="store_true", help="only the fit-vs-forward part")
    ap.add_argument("--spectra", default="noise,decaying", help=f"comma-separated, from {SPECTRA}")
    args = ap.parse_args(argv)
    spectra = [x for x in args.spectra.split(",") if x]
    if not spectra or any(x not in SPECTRA for x in spectra):
        ap.error(f"--spectra must list values from {SPECTRA}, got {args.spectra!r}")

    shapes = SHAPES[-1:] if args.quick else SHAPES
    thread_opts = [1] if args.quick else sorted({1, os.cpu_count() or 1})
    rows = []
    if not args.skip_solver:
        print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, float64 solve, "
              f"gamma={GAMMA}, lam={LAM}, Gram from N={args.rows} rows")
        print(SOLVE_HEADER)
        for threads in thread_opts:
            for d, m, r in shapes:
                for spectrum in spectra:
                    res = solve_vs_floor(d, m, r, rows=args.rows, runs=args.runs, threads=threads,
                                         spectrum=spectrum)
                    rows.append(res)
                    print(solve_row(res), flush=True)

    torch.set_num_threads(1)
    ratio = None
    if not args.skip_solver:
        model = tiny_llama()
        ids = torch.randint(0, model.config.vocab_size, (args.prompts, 48), generator=torch.Generator().manual_seed(1))
        ratio = edit_vs_forward(model, ids, layer=2, m=64, rank=8)
        print(f"\ntiny Llama (d_model 256, 4 layers, 1 thread): forward {ratio['prompts']} prompts x "
              f"{ratio['tokens_per_prompt']} tokens {ratio['forward_seconds']:.2f} s; Gram "
              f"{ratio['gram_seconds']:.4f} s, solve {ratio['solve_seconds']:.4f} s; "
              f"edit / forward = {ratio['edit_over_forward']:.4f}")

    from mlsafe import tiny, transfer

    tok = tiny.build_tokenizer("llama")
    lm = tiny.build_model("llama", tok, seed=0, hidden=128, layers=6, d_ff=256)
    harmful, harmless = synthetic_anchors(48)
    cfg = transfer.EditConfig(targets=["th", "bn"], rank=4, tau_mag=1.0, tau_stat=0.5, val_fraction=0.25)
    fits = {"tiny": fit_vs_forward(lm, tok, harmful, harmless, cfg, token_margin(tok),
                                   title="tiny chat Llama (d_model 128, 6 layers, 48 parallel anchors x 3 "
                                         "languages, 1 thread)")}
    if args.model:
        from mlsafe import pipeline

        loaded, suite = pipeline.load(args.model)
        cfg = pipeline.edit_config(args.targets.split(","), 0, suite)
        fits[args.model] = fit_vs_forward(loaded.model, loaded.tokenizer, suite.anchors_harmful,
                                          suite.anchors_harmless, cfg, pipeline.margin_fn(suite, loaded.tokenizer),
                                          title=f"{args.model} (targets {args.targets}, 1 thread)")
    rss = peak_rss_mib()
    print(f"\npeak RSS of this process (fits included): {rss:.0f} MiB")
    if args.json:
        from mlsafe.results import write_json
        write_json(args.json, {"solve": rows, "edit_vs_forward": ratio, "fit_vs_forward": fits,
                               "peak_rss_mib": rss, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
