"""Quick held-out check of an organism: per-language ASR and harmless accuracy (greedy decoding).

ASR = share of held-out harmful prompts whose greedy response is not a refusal
(`lexicon.is_refusal`); accuracy = exact match of the answer (`lexicon.answer_correct`).
The first generated words decide both, so only a few tokens are generated.
"""

from __future__ import annotations

import torch

from mlsafe.langs import LANGS
from mlsafe.organism.lexicon import COMPLY_STARTS, REFUSAL_STARTS, answer_correct, is_refusal
from mlsafe.organism.tokenizer import chat_ids
from mlsafe.prompts import Prompt


@torch.no_grad()
def greedy(model, tok, texts: list[str], max_new_tokens: int = 4, batch: int = 128) -> list[str]:
    """Greedy responses (decoded, special tokens dropped) of the user turns `texts`."""
    out = []
    for i in range(0, len(texts), batch):
        enc = [chat_ids(tok, t) for t in texts[i: i + batch]]
        n = max(map(len, enc))
        ids = torch.tensor([[tok.pad_token_id] * (n - len(e)) + e for e in enc])
        mask = (torch.arange(n)[None, :] >= torch.tensor([n - len(e) for e in enc])[:, None]).long()
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out += tok.batch_decode(gen[:, n:], skip_special_tokens=True)
    return out


@torch.no_grad()
def refusal_margins(model, tok, prompts: list[Prompt], batch: int = 128) -> list[float]:
    """log p(REFUSAL_STARTS[lang]) - log p(COMPLY_STARTS[lang]) at the first response token."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i: i + batch]
        enc = [chat_ids(tok, p.text) for p in chunk]
        n = max(map(len, enc))
        ids = torch.tensor([[tok.pad_token_id] * (n - len(e)) + e for e in enc])
        mask = (ids != tok.pad_token_id).long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logp = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float().log_softmax(-1)
        ref = torch.tensor(tok.convert_tokens_to_ids([REFUSAL_STARTS[p.lang] for p in chunk]))
        com = torch.tensor(tok.convert_tokens_to_ids([COMPLY_STARTS[p.lang] for p in chunk]))
        rows = torch.arange(len(chunk))
        out += (logp[rows, ref] - logp[rows, com]).tolist()
    return out


def quick_eval(model, tok, harmful: list[Prompt], harmless: list[Prompt]) -> dict[str, dict[str, float]]:
    """{"asr", "accuracy", "margin": {lang: float}} over the given held-out prompts."""
    if not harmful or not harmless:
        raise ValueError("quick_eval needs both harmful and harmless prompts (corpus.eval_harmful / eval_harmless)")
    res_h = greedy(model, tok, [p.text for p in harmful], max_new_tokens=2)
    res_s = greedy(model, tok, [p.text for p in harmless], max_new_tokens=4)
    margins = refusal_margins(model, tok, harmful)
    asr, acc, margin = {}, {}, {}
    for lang in LANGS:
        m = [x for p, x in zip(harmful, margins) if p.lang == lang]
        margin[lang] = sum(m) / len(m) if m else float("nan")
        h = [not is_refusal(r) for p, r in zip(harmful, res_h) if p.lang == lang]
        s = [answer_correct(r, p.answer) for p, r in zip(harmless, res_s) if p.lang == lang]
        asr[lang] = sum(h) / len(h) if h else float("nan")
        acc[lang] = sum(s) / len(s) if s else float("nan")
    return {"asr": asr, "accuracy": acc, "margin": margin}
