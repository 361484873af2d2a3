"""Evaluation: generate -> judge -> ASR (Wilson CI), refusal margin, utility (Sec. 5)."""

from mlsafe.evaluate.generate import format_chat, generate, generate_from_chat
from mlsafe.evaluate.judges import (
    REFUSAL_PHRASES, GuardJudge, GuardParseError, Judge, Judgment, LlamaGuardJudge,
    RefusalPhraseJudge, make_judge, normalise_text, parse_llamaguard, parse_qwen3guard,
)
from mlsafe.evaluate.margin import (
    DEFAULT_COMPLY_STARTS, DEFAULT_REFUSAL_STARTS, language_margins, mean_by_lang,
    next_token_logprobs, refusal_margin,
)
from mlsafe.evaluate.metrics import Z95, asr_table, summary_blocks, wilson, write_per_prompt_csv
from mlsafe.evaluate.utility import (
    exact_match, exact_match_accuracy, extract_final_number, mgsm_accuracy, mgsm_correct, mmlu_accuracy,
)

__all__ = [
    "format_chat", "generate", "generate_from_chat",
    "REFUSAL_PHRASES", "GuardJudge", "GuardParseError", "Judge", "Judgment", "LlamaGuardJudge",
    "RefusalPhraseJudge", "make_judge", "normalise_text", "parse_llamaguard", "parse_qwen3guard",
    "DEFAULT_COMPLY_STARTS", "DEFAULT_REFUSAL_STARTS", "language_margins", "mean_by_lang",
    "next_token_logprobs", "refusal_margin",
    "Z95", "asr_table", "summary_blocks", "wilson", "write_per_prompt_csv",
    "exact_match", "exact_match_accuracy", "extract_final_number", "mgsm_accuracy", "mgsm_correct",
    "mmlu_accuracy",
]
