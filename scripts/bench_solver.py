"""Benchmark of the Theorem 4.1 solver (`make bench`).

Prints, for real-model shapes (d_model, m, r) and the organism-sized one:
  * solve_from_gram time (median of --runs) with 1 torch thread and with all cores;
  * the time to build the Gram matrices (EditGram) from N = --rows anchor rows;
and the ratio of edit time (Gram + solve) to the forward passes that collect its statistics,
measured on a tiny randomly initialised Llama built from a local LlamaConfig (no downloads).
`edit_vs_forward(model, input_ids, layer=..., m=..., rank=...)` is importable for any model
whose blocks live at model.model.layers[i].mlp (Llama, Qwen2, Gemma).
Inputs are random: timings depend on the shapes only, not on the values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlsafe import solver  # noqa: E402

SHAPES = [(3584, 256, 16), (3584, 1024, 16), (3584, 2048, 16), (2048, 512, 16), (256, 64, 8)]
GAMMA, LAM = 1.0, 1.0


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_rows(n: int, d: int, m: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Anchor matrices X_low [n, d], D [n, m], X_safe [n, d] in float32, as a probe would hand them."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g), torch.randn(n, m, generator=g), torch.randn(n, d, generator=g))


def bench_shape(d: int, m: int, rank: int, *, rows: int, runs: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    x_low, d_gap, x_safe = random_rows(rows, d, m)
    t0 = time.perf_counter()
    g = solver.build_gram(x_low, d_gap, x_safe)
    gram_s = time.perf_counter() - t0
    solve_s = median_seconds(lambda: solver.solve_from_gram(g, rank=rank, gamma=GAMMA, lam=LAM), runs)
    return {"d_model": d, "m": m, "rank": rank, "threads": threads, "rows": rows,
            "gram_seconds": gram_s, "solve_seconds": solve_s}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="solve repetitions per shape (median)")
    ap.add_argument("--rows", type=int, default=2000, help="anchor rows N for the Gram build")
    ap.add_argument("--quick", action="store_true", help="organism shape only, one thread")
    ap.add_argument("--prompts", type=int, default=512, help="prompts for the forward-pass ratio")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    shapes = SHAPES[-1:] if args.quick else SHAPES
    thread_opts = [1] if args.quick else sorted({1, os.cpu_count() or 1})
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, float64 solve, "
          f"gamma={GAMMA}, lam={LAM}, Gram from N={args.rows} rows")
    print(f"{'d_model':>7} {'m':>5} {'r':>3} {'threads':>7} {'gram_s':>8} {'solve_s':>8}")
    rows = []
    for threads in thread_opts:
        for d, m, r in shapes:
            res = bench_shape(d, m, r, rows=args.rows, runs=args.runs, threads=threads)
            rows.append(res)
            print(f"{d:>7} {m:>5} {r:>3} {threads:>7} {res['gram_seconds']:>8.3f} {res['solve_seconds']:>8.3f}",
                  flush=True)

    torch.set_num_threads(1)
    model = tiny_llama()
    ids = torch.randint(0, model.config.vocab_size, (args.prompts, 48), generator=torch.Generator().manual_seed(1))
    ratio = edit_vs_forward(model, ids, layer=2, m=64, rank=8)
    print(f"\ntiny Llama (d_model 256, 4 layers, 1 thread): forward {ratio['prompts']} prompts x "
          f"{ratio['tokens_per_prompt']} tokens {ratio['forward_seconds']:.2f} s; Gram {ratio['gram_seconds']:.4f} s, "
          f"solve {ratio['solve_seconds']:.4f} s; edit / forward = {ratio['edit_over_forward']:.4f}")
    if args.json:
        from mlsafe.results import write_json
        write_json(args.json, {"solve": rows, "edit_vs_forward": ratio, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
