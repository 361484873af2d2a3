"""Machine translation of prompts (the paper translates with Hunyuan-MT-7B; a GPU step).

`python -m mlsafe.data.translate strongreject --langs all` writes Multi-StrongREJECT to
<data root>/multi_strongreject/<lang>.csv; `anchors_harmful` / `anchors_harmless` write
<data root>/translations/<name>/<lang>.csv, the folders the loaders read.
Decoding is greedy (the model card suggests sampling; greedy keeps the data deterministic).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mlsafe.langs import NAMES, parse_targets
from mlsafe.prompts import Prompt

DEFAULT_MT = "tencent/Hunyuan-MT-7B"


def mt_instruction(text: str, target: str) -> str:
    """Hunyuan-MT's prompt: the Chinese template for Chinese targets, the English one otherwise."""
    if target not in NAMES:
        raise ValueError(f"unknown target language {target!r}; use one of {', '.join(NAMES)}")
    if target == "zh":
        return f"把下面的文本翻译成中文，不要额外解释。\n\n{text}"
    return f"Translate the following segment into {NAMES[target]}, without additional explanation.\n\n{text}"


def translate(prompts: Sequence[Prompt], target_langs: Sequence[str], *, model_id: str = DEFAULT_MT,
              device: str = "cuda", batch_size: int = 8, max_new_tokens: int = 512,
              model=None, tokenizer=None, progress: bool = True) -> list[Prompt]:
    """Translations of each prompt (and of its reference response, when it has one) into each
    target language; a prompt already in a target language is not translated into it.
    Keeps parallel_id, harmful and answer; id = "<parallel_id>-<lang>". Pass model/tokenizer
    to reuse a loaded model (e.g. a tiny test one)."""
    if model is None or tokenizer is None:
        model, tokenizer = load_mt(model_id, device)
    from mlsafe.evaluate.generate import generate

    def run(texts: list[str], lang: str) -> list[str]:
        return [t.strip() for t in generate(model, tokenizer, [mt_instruction(t, lang) for t in texts],
                                            max_new_tokens=max_new_tokens, batch_size=batch_size,
                                            progress=progress)]

    out: list[Prompt] = []
    for lang in target_langs:
        todo = [p for p in prompts if p.lang != lang]
        texts = run([p.text for p in todo], lang)
        with_resp = [i for i, p in enumerate(todo) if p.response]
        responses: list[str | None] = [None] * len(todo)
        for i, r in zip(with_resp, run([todo[i].response for i in with_resp], lang)):
            responses[i] = r
        out += [Prompt(id=f"{p.parallel_id}-{lang}", lang=lang, text=t, harmful=p.harmful,
                       parallel_id=p.parallel_id, answer=p.answer, response=r)
                for p, t, r in zip(todo, texts, responses)]
    return out


def load_mt(model_id: str, device: str):
    """The translation model in bf16 where the device supports it (trust_remote_code off)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16 = device != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(
        model_id, dtype=torch.bfloat16 if bf16 else torch.float32,
        device_map="auto" if device == "cuda" else device)
    return model.eval(), tokenizer


def main(argv: list[str] | None = None) -> None:
    from mlsafe.data.loaders import (data_root, load_anchors_harmful, load_anchors_harmless,
                                     load_strongreject, write_parallel_folder)

    parser = argparse.ArgumentParser(description="translate the English prompt sets (GPU)")
    parser.add_argument("what", choices=["strongreject", "anchors_harmful", "anchors_harmless"])
    parser.add_argument("--langs", default="all", help="target codes, comma-separated, or 'all'")
    parser.add_argument("--model", default=DEFAULT_MT)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--source", default=None, help="data root for the English sets (default $MLSAFE_DATA)")
    parser.add_argument("--out", default=None, help="output folder (default: where the loaders look)")
    args = parser.parse_args(argv)
    loaders = {"strongreject": load_strongreject, "anchors_harmful": load_anchors_harmful,
               "anchors_harmless": load_anchors_harmless}
    english = loaders[args.what](args.source)
    root = data_root(args.source) or Path("data")
    default = root / "multi_strongreject" if args.what == "strongreject" else root / "translations" / args.what
    out = Path(args.out) if args.out else default
    langs = parse_targets(args.langs)
    translated = translate(english, langs, model_id=args.model, device=args.device, batch_size=args.batch_size)
    write_parallel_folder(translated, out)
    print(f"wrote {len(translated)} translations of {len(english)} prompts to {out}")


if __name__ == "__main__":
    main()
