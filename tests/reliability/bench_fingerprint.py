"""Measure mlsafe.edit.fingerprint on a random Qwen2-0.5B-sized model (CPU, float32 and bfloat16).

Not collected by pytest (no test_ prefix). Run:
    OMP_NUM_THREADS=1 .venv/bin/python tests/reliability/bench_fingerprint.py
Prints the parameter count and the seconds of fingerprint(model, layer) for each dtype, and
checks that the float32 model and its bfloat16 copy have the same fingerprint.
"""

from __future__ import annotations

import time

import torch
import transformers

from mlsafe.edit import fingerprint

QWEN2_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                 tie_word_embeddings=True)


def main() -> None:
    config = transformers.AutoConfig.for_model("qwen2", **QWEN2_05B)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    n = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    fp32 = fingerprint(model, 3)
    t_fp32 = time.perf_counter() - t0
    model = model.to(torch.bfloat16)
    t0 = time.perf_counter()
    bf16 = fingerprint(model, 3)
    t_bf16 = time.perf_counter() - t0
    print(f"params={n:,} threads={torch.get_num_threads()} float32={t_fp32:.2f}s bfloat16={t_bf16:.2f}s "
          f"same={fp32 == bf16}")


if __name__ == "__main__":
    main()
