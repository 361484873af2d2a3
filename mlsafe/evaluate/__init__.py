"""Evaluation: generate -> judge -> ASR (Wilson and cluster-bootstrap CI, paired tests), refusal margin,
utility (Sec. 5)."""

from mlsafe.evaluate.generate import format_chat, generate, generate_from_chat
from mlsafe.evaluate.judges import (
    DEFAULT_REAL_JUDGE, REFUSAL_PHRASES, GuardJudge, GuardParseError, Judge, Judgment, LlamaGuardJudge,
    RefusalPhraseJudge, RuleClfJudge, RuleJudge, make_judge, normalise_text, parse_llamaguard, parse_qwen3guard,
)
from mlsafe.evaluate.kl import first_token_kl, first_token_kl_given, first_token_kl_per_prompt
from mlsafe.evaluate.margin import (
    DEFAULT_COMPLY_STARTS, DEFAULT_REFUSAL_STARTS, language_margins, mean_by_lang,
    next_token_logprobs, refusal_margin,
)
from mlsafe.evaluate.metrics import (
    N_BOOT, UNCLEAR_LABELS, Z95, asr_table, compare, summary_blocks, summary_extra, wilson, write_per_prompt_csv,
)
from mlsafe.evaluate.stats import (
    cluster_bootstrap_ci, cluster_codes, design_effect, effective_n, mcnemar_exact, paired_bootstrap_diff,
)
from mlsafe.evaluate.utility import (
    exact_match, exact_match_accuracy, extract_final_number, mgsm_accuracy, mgsm_correct, mmlu_accuracy,
)

__all__ = [
    "format_chat", "generate", "generate_from_chat",
    "REFUSAL_PHRASES", "GuardJudge", "GuardParseError", "Judge", "Judgment", "LlamaGuardJudge",
    "RefusalPhraseJudge", "make_judge", "DEFAULT_REAL_JUDGE", "RuleJudge", "RuleClfJudge",
    "first_token_kl", "first_token_kl_given", "first_token_kl_per_prompt", "normalise_text", "parse_llamaguard", "parse_qwen3guard",
    "DEFAULT_COMPLY_STARTS", "DEFAULT_REFUSAL_STARTS", "language_margins", "mean_by_lang",
    "next_token_logprobs", "refusal_margin",
    "N_BOOT", "UNCLEAR_LABELS", "Z95", "asr_table", "compare", "summary_blocks", "summary_extra", "wilson",
    "write_per_prompt_csv",
    "cluster_bootstrap_ci", "cluster_codes", "design_effect", "effective_n", "mcnemar_exact",
    "paired_bootstrap_diff",
    "exact_match", "exact_match_accuracy", "extract_final_number", "mgsm_accuracy", "mgsm_correct",
    "mmlu_accuracy",
]
