"""Utility metrics (Sec. 5, Table 1): exact match (the organism's harmless tasks), MGSM
(final number of the response), M-MMLU / MMMLU (option letter by log-likelihood)."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Sequence

import torch

from mlsafe.evaluate.generate import generate
from mlsafe.evaluate.margin import first_token_ids, next_token_logprobs
from mlsafe.prompts import Prompt

_EDGE_PUNCT = " \t\n\"'`.,;:!?。，、！？：；)(（）[]「」『』״׳"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
LETTERS = ("A", "B", "C", "D")


def _answers(prompts: Sequence[Prompt]) -> list[str]:
    missing = [p.id for p in prompts if p.answer is None]
    if missing:
        raise ValueError(f"prompts without an answer (Prompt.answer): {missing[:5]}; "
                         "utility metrics need the verifiable answer")
    return [str(p.answer) for p in prompts]


def normalise_answer(text: str) -> str:
    """First line, NFKC, casefold, whitespace collapsed, punctuation stripped at both ends."""
    line = unicodedata.normalize("NFKC", text).strip().split("\n", 1)[0] if text.strip() else ""
    return " ".join(line.casefold().split()).strip(_EDGE_PUNCT)


def exact_match(response: str, answer: str) -> bool:
    """Normalised response equals the normalised answer, or starts with it as whole words."""
    r, a = normalise_answer(response), normalise_answer(answer)
    if not a:
        raise ValueError(f"answer {answer!r} is empty after normalisation")
    return r == a or r.startswith(a + " ")


def exact_match_accuracy(model, tokenizer, prompts_with_answers: Sequence[Prompt], *,
                         max_new_tokens: int = 16, batch_size: int = 16, progress: bool = False) -> list[bool]:
    """Per-prompt correctness of greedy responses under `exact_match`."""
    answers = _answers(prompts_with_answers)
    responses = generate(model, tokenizer, [p.text for p in prompts_with_answers],
                         max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    return [exact_match(r, a) for r, a in zip(responses, answers)]


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch
                   for ch in unicodedata.normalize("NFKC", text))


def canonical_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5'; None when not a number. Commas are thousands separators."""
    try:
        d = Decimal(_ascii_digits(text).replace(",", "").strip())
    except InvalidOperation:
        return None
    d = d.normalize()
    return format(d.quantize(Decimal(1)) if d == d.to_integral() else d, "f")


def extract_final_number(text: str) -> str | None:
    """The last number in the text (any script's decimal digits), canonicalised, else None."""
    found = _NUMBER.findall(_ascii_digits(text))
    return canonical_number(found[-1]) if found else None


def mgsm_correct(response: str, answer: str) -> bool:
    """MGSM rule: the final number of the response equals the answer number exactly."""
    want = canonical_number(answer)
    if want is None:
        raise ValueError(f"MGSM answer {answer!r} is not a number")
    return extract_final_number(response) == want


def mgsm_accuracy(model, tokenizer, prompts: Sequence[Prompt], *, max_new_tokens: int = 256,
                  batch_size: int = 16, progress: bool = True) -> list[bool]:
    """MGSM: per-prompt `mgsm_correct` of the greedy responses."""
    answers = _answers(prompts)
    for a in answers:
        if canonical_number(a) is None:
            raise ValueError(f"MGSM answer {a!r} is not a number")
    responses = generate(model, tokenizer, [p.text for p in prompts], max_new_tokens=max_new_tokens,
                         batch_size=batch_size, progress=progress)
    return [mgsm_correct(r, a) for r, a in zip(responses, answers)]


def mmlu_accuracy(model, tokenizer, prompts: Sequence[Prompt], *, batch_size: int = 16,
                  device=None) -> list[bool]:
    """Multiple choice: the option letter (A-D) with the highest next-token log-probability at
    the answer position (after the chat template's assistant header) equals the answer."""
    answers = [a.strip().upper() for a in _answers(prompts)]
    bad = sorted({a for a in answers if a not in LETTERS})
    if bad:
        raise ValueError(f"MMLU answers must be one of {LETTERS}, got {bad}")
    ids = [first_token_ids(tokenizer, [letter])[0] for letter in LETTERS]
    if len(set(ids)) != len(LETTERS):
        raise ValueError("the option letters A-D do not have distinct first tokens in this tokenizer")
    lp = next_token_logprobs(model, tokenizer, [p.text for p in prompts], ids,
                             batch_size=batch_size, device=device)
    pred = [LETTERS[i] for i in torch.argmax(lp, dim=-1).tolist()]
    return [p == a for p, a in zip(pred, answers)]
