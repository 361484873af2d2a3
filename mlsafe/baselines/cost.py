"""Estimated floating-point operations (FLOPs) and token counts of every method.

Conventions (stated so the numbers can be checked by hand):

* A forward pass costs 2 N FLOPs per token (one multiply and one add per weight), N the
  parameters that take part in matrix products: every unique parameter except the
  input-embedding table (a lookup), but including the LM head; with tied embeddings the
  shared table is the head and is counted once (`matmul_params`).
* Training: backward ~ 2 x forward, so one training token costs 3 x 2 N = 6 N.
* The closed-form solve of Theorem 4.1 for one module (d = d_in, m = |S|, rank r), the
  standard dense-algebra counts: building Q (2 d^2 for the weighted sum), Cholesky d^3 / 3,
  the triangular solve R M = L^{-1} X_low^T D (d^2 m), the small Gram (R M)^T R M (2 d m^2),
  its symmetric eigendecomposition with vectors (9 k^3, k = min(d, m), Golub & Van Loan),
  U_r S_r = R M V_r (2 d m r) and the back-substitution R^{-1} U_r S_r (d^2 r).
* Streaming a Gram X^T X over n rows of width d costs 2 n d^2.
* Counted as fed (`MatmulCounter`): 2 x in x out FLOPs per row that reaches each linear
  layer during the passes actually run: padding and the LM head's rows included, layers an
  early stop (mlsafe.probe.capture) or a trunk replay (mlsafe.trunk) skips and an opening
  computed once (mlsafe.evaluate.prefix) not. Training counts its forward so and adds 2x for
  the backward.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.module import register_module_forward_hook


def matmul_params(model: nn.Module) -> int:
    """Parameters that cost FLOPs in a forward pass (see the module docstring)."""
    total = sum(p.numel() for p in model.parameters())  # unique parameters (tied counted once)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    return total if tied else total - emb.numel()


class MatmulCounter:
    """Context manager: FLOPs of every nn.Linear call in this process while it is open, 2 x in x
    out per input row (``flops``), modules created meanwhile (e.g. LoRA adapters) included.
    Its global hook is removed on exit, also after an error."""

    def __init__(self):
        self.flops, self._hook = 0.0, None

    def _count(self, module: nn.Module, inputs: tuple, _output) -> None:
        if isinstance(module, nn.Linear):
            self.flops += 2.0 * inputs[0].numel() * module.out_features    # rows x in x out, twice

    def __enter__(self) -> "MatmulCounter":
        self._hook = register_module_forward_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()


def forward_flops(n_params: int, tokens: int) -> float:
    """2 N per token."""
    _check_counts(n_params=n_params, tokens=tokens)
    return 2.0 * n_params * tokens


def train_flops(n_params: int, tokens: int) -> float:
    """Forward + backward (2 x forward) = 6 N per token."""
    return 3.0 * forward_flops(n_params, tokens)


def gram_flops(rows: int, d: int) -> float:
    """Streaming X^T X over `rows` rows of width d: 2 rows d^2."""
    _check_counts(rows=rows, d=d)
    return 2.0 * rows * d * d


def solve_flops(d: int, m: int, rank: int) -> float:
    """Theorem 4.1 for one module (counts in the module docstring)."""
    _check_counts(d=d, m=m, rank=rank)
    k = min(d, m)
    return 2.0 * d * d + d ** 3 / 3.0 + d * d * m + 2.0 * d * m * m + 9.0 * k ** 3 \
        + 2.0 * d * m * rank + d * d * rank


def count_tokens(tokenizer, texts: Sequence[str]) -> int:
    """Total tokens of already-templated texts (encoded without special tokens)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    return sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]) \
        if texts else 0


def _check_counts(**counts: int) -> None:
    bad = {k: v for k, v in counts.items() if not (isinstance(v, int) and v >= 0)}
    if bad:
        raise ValueError(f"counts must be non-negative integers, got {bad}")
