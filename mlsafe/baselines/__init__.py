"""Baselines, the training stand-in for MPO, and cost estimates (issue 6).

`run.run_baselines` runs every method on one model + suite and writes baselines.csv;
`direction` holds the refusal-direction baselines, `finetune` the LoRA fine-tune,
`cost` the FLOP conventions.
"""

from mlsafe.baselines.cost import count_tokens, forward_flops, gram_flops, matmul_params, solve_flops, train_flops
from mlsafe.baselines.direction import actadd, fit_direction, orthogonalised, refusal_directions, residuals
from mlsafe.baselines.finetune import LoRATrainer, SFTConfig, WeightDelta, sft_examples, train_sft
from mlsafe.baselines.run import COLUMNS, METHODS, lang_metrics, run_baselines

__all__ = [
    "count_tokens", "forward_flops", "gram_flops", "matmul_params", "solve_flops", "train_flops",
    "actadd", "fit_direction", "orthogonalised", "refusal_directions", "residuals",
    "LoRATrainer", "SFTConfig", "WeightDelta", "sft_examples", "train_sft",
    "COLUMNS", "METHODS", "lang_metrics", "run_baselines",
]
