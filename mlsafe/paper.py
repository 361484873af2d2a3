"""The paper's reported numbers (arXiv 2602.22554), typed once; the book compares against these.

Table 6: unsafe responses out of N_TEST = 313 Multi-StrongREJECT prompts per language,
None (unedited) -> edit. The headline ASR table (mean over the eight languages, %) is
derived from those counts (`headline_from_table6`) and also typed as printed
(`HEADLINE`), so a test can check the two agree. Table 1: utility (MGSM / M-MMLU
accuracy, %), None -> edit. Tables 2-4: ablations on Llama-3.2-1B.
"""

from __future__ import annotations

import pandas as pd

from mlsafe.langs import LANGS

N_TEST = 313
MODELS: tuple[str, ...] = ("Llama-3.2-1B", "Llama-3.2-3B", "Qwen2-0.5B", "Qwen2-1.5B",
                           "Qwen2.5-1.5B", "Qwen2.5-3B", "Qwen2.5-7B")
#: Hub ids of the instruction-tuned checkpoints the paper evaluates.
HUB_IDS: dict[str, str] = {
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B-Instruct", "Llama-3.2-3B": "meta-llama/Llama-3.2-3B-Instruct",
    "Qwen2-0.5B": "Qwen/Qwen2-0.5B-Instruct", "Qwen2-1.5B": "Qwen/Qwen2-1.5B-Instruct",
    "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5-7B": "Qwen/Qwen2.5-7B-Instruct",
}

# Table 6, in LANGS order (en zh vi ja th id bn he): (None, edit) unsafe counts of 313.
TABLE6: dict[str, tuple[tuple[int, int], ...]] = {
    "Llama-3.2-1B": ((6, 0), (61, 27), (31, 4), (149, 81), (69, 30), (104, 38), (179, 144), (109, 115)),
    "Llama-3.2-3B": ((6, 4), (9, 3), (10, 2), (79, 34), (22, 4), (19, 5), (110, 65), (39, 46)),
    "Qwen2-0.5B": ((224, 176), (197, 121), (185, 139), (193, 145), (162, 138), (205, 168), (208, 173),
                   (150, 134)),
    "Qwen2-1.5B": ((36, 5), (18, 4), (36, 15), (67, 19), (60, 13), (50, 4), (187, 150), (83, 36)),
    "Qwen2.5-1.5B": ((60, 17), (30, 5), (42, 14), (56, 14), (68, 18), (59, 25), (182, 152), (118, 81)),
    "Qwen2.5-3B": ((61, 14), (64, 4), (64, 7), (81, 15), (57, 16), (60, 15), (157, 112), (100, 41)),
    "Qwen2.5-7B": ((16, 3), (12, 5), (21, 6), (39, 9), (27, 12), (21, 6), (98, 60), (48, 24)),
}

# Headline table as printed: mean ASR (%) over the eight languages.
HEADLINE: dict[str, dict[str, float]] = {
    "Llama-3.2-1B": {"None": 28.27, "edit": 17.53, "MPO": 19.53, "MPO + edit": 12.98},
    "Llama-3.2-3B": {"None": 11.74, "edit": 6.51, "MPO": 9.27, "MPO + edit": 5.39},
    "Qwen2-0.5B": {"None": 60.86, "edit": 47.68, "MPO": 30.35, "MPO + edit": 18.97},
    "Qwen2-1.5B": {"None": 21.45, "edit": 9.82, "MPO": 1.24, "MPO + edit": 0.64},
    "Qwen2.5-1.5B": {"None": 24.56, "edit": 13.02, "MPO": 3.99, "MPO + edit": 3.87},
    "Qwen2.5-3B": {"None": 25.72, "edit": 8.95, "MPO": 7.47, "MPO + edit": 2.40},
    "Qwen2.5-7B": {"None": 11.26, "edit": 4.99, "MPO": 3.35, "MPO + edit": 1.16},
}

# Table 1: (MGSM, M-MMLU) accuracy in %, None -> edit.
UTILITY: dict[str, dict[str, tuple[float, float]]] = {
    "Llama-3.2-1B": {"None": (18.58, 26.54), "edit": (18.36, 27.22)},
    "Llama-3.2-3B": {"None": (32.76, 37.10), "edit": (32.76, 37.00)},
    "Qwen2-0.5B": {"None": (7.75, 32.71), "edit": (5.27, 31.01)},
    "Qwen2-1.5B": {"None": (20.95, 41.63), "edit": (20.33, 41.58)},
    "Qwen2.5-1.5B": {"None": (27.53, 41.58), "edit": (25.13, 41.89)},
    "Qwen2.5-3B": {"None": (31.02, 47.18), "edit": (30.91, 44.87)},
    "Qwen2.5-7B": {"None": (32.00, 49.37), "edit": (31.56, 49.19)},
}

# Tables 2-4 (Llama-3.2-1B): mean ASR %, MGSM %, M-MMLU %.
ABLATIONS: dict[str, tuple[float, float, float]] = {
    "both anchor terms (gamma and lambda)": (17.53, 18.36, 27.22),
    "utility anchor (gamma) only": (68.57, 0.11, 24.21),
    "ridge (lambda) only": (17.25, 11.02, 26.02),
    "linear-probe neurons (NeuroStrike)": (14.93, 17.71, 27.14),
}
#: Table 4: ASR over ranks 4 ... 512 stays within this range (%).
RANK_ASR_RANGE: tuple[float, float] = (14.90, 17.53)


def _check_model(model: str) -> None:
    if model not in TABLE6:
        raise KeyError(f"unknown paper model {model!r}; use one of {', '.join(MODELS)}")


def table6(model: str) -> pd.DataFrame:
    """Per language (rows, LANGS order): unsafe counts and ASR % before ("None") and after ("edit")."""
    _check_model(model)
    counts = pd.DataFrame(TABLE6[model], index=pd.Index(LANGS, name="lang"), columns=["None", "edit"])
    out = counts.rename(columns={"None": "unsafe_none", "edit": "unsafe_edit"})
    out["asr_none"] = 100.0 * counts["None"] / N_TEST
    out["asr_edit"] = 100.0 * counts["edit"] / N_TEST
    out["relative_reduction"] = relative_reduction(out["asr_none"], out["asr_edit"])
    return out


def relative_reduction(before, after):
    """(before - after) / before, elementwise; NaN where before is 0 (nothing to reduce)."""
    before = pd.Series(before, dtype="float64") if not isinstance(before, pd.Series) else before.astype("float64")
    after = pd.Series(after, dtype="float64", index=before.index) if not isinstance(after, pd.Series) \
        else after.astype("float64")
    return (before - after) / before.where(before > 0)


def asr_none(models: tuple[str, ...] = MODELS) -> pd.DataFrame:
    """ASR % before any edit, languages x models (the "None" column of Table 6)."""
    return pd.DataFrame({m: table6(m)["asr_none"] for m in models})


def headline_from_table6() -> pd.DataFrame:
    """Mean ASR % over the eight languages, None and edit, recomputed from the Table 6 counts."""
    rows = {m: {"None": float(table6(m)["asr_none"].mean()), "edit": float(table6(m)["asr_edit"].mean())}
            for m in MODELS}
    return pd.DataFrame(rows).T.rename_axis("model")


def utility_frame() -> pd.DataFrame:
    """Table 1 as a frame: MGSM and M-MMLU accuracy %, None and edit, one row per model."""
    rows = {m: {"MGSM none": u["None"][0], "M-MMLU none": u["None"][1],
                "MGSM edit": u["edit"][0], "M-MMLU edit": u["edit"][1]} for m, u in UTILITY.items()}
    return pd.DataFrame(rows).T.rename_axis("model")


# ---------------------------------------------------------------------------------------------
# Resource estimates for chapter 7 (ESTIMATES from parameter counts, not measurements).

#: Approximate parameter counts in billions, from the models' public model cards (not the paper).
PARAMS_B: dict[str, float] = {
    "Llama-3.2-1B": 1.24, "Llama-3.2-3B": 3.21, "Qwen2-0.5B": 0.49, "Qwen2-1.5B": 1.54,
    "Qwen2.5-1.5B": 1.54, "Qwen2.5-3B": 3.09, "Qwen2.5-7B": 7.62,
}
GUARD_ID = "Qwen/Qwen3Guard-Gen-8B"
GUARD_PARAMS_B = 8.2


def gpu_estimate(params_b: float, *, n_targets: int = 1, n_langs: int = 8, n_test: int = N_TEST,
                 n_utility: int = 1250, n_random: int = 3, max_new_tokens: int = 256, batch_size: int = 16,
                 bandwidth_gbs: float = 1500.0, step_floor_s: float = 0.025) -> dict[str, float]:
    """Rough memory and time of one `make reproduce` seed on one GPU, from the parameter count.

    Memory: bf16 weights (2 bytes per parameter) of the model and of the guard judge
    (Qwen3Guard-Gen-8B), plus 20 % for activations and the KV cache; the peak assumes both
    resident. Time: an upper bound for greedy generation of every response to max_new_tokens
    (before and after on all languages' test prompts, the random-neuron controls on the
    targets, and the utility prompts, before and after): each decoding step of a batch reads
    all weights once (2 P bytes / bandwidth) but costs at least `step_floor_s` of framework
    overhead. The guard's judging is counted as one prefill-sized step per batch. These are
    estimates, not measurements.
    """
    if params_b <= 0:
        raise ValueError(f"params_b must be > 0 (billions of parameters), got {params_b}")
    weights_gb = 2.0 * params_b
    guard_gb = 2.0 * GUARD_PARAMS_B
    responses = 2 * n_langs * n_test + n_random * n_targets * n_test + 2 * n_utility
    batches = -(-responses // batch_size)
    step = max(weights_gb / bandwidth_gbs, step_floor_s)
    gen_s = batches * max_new_tokens * step
    judge_s = batches * max(guard_gb / bandwidth_gbs, step_floor_s) * 8
    return {"weights_gb": weights_gb, "guard_gb": guard_gb, "peak_gb": 1.2 * (weights_gb + guard_gb),
            "responses": float(responses), "generate_minutes": gen_s / 60.0,
            "judge_minutes": judge_s / 60.0, "total_minutes": (gen_s + judge_s) / 60.0}
