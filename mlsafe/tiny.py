"""Tiny randomly initialised Qwen2 and Llama models for end-to-end tests, built offline.

`python -m mlsafe.tiny OUT_DIR` writes OUT_DIR/qwen2 and OUT_DIR/llama, each a normal
Hugging Face folder (config, safetensors weights, tokenizer, chat template) that loads
with `AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)`.

The tokenizer is a byte-level BPE trained here on a few sentences in all eight scripts
(so every language round-trips byte-exactly); the chat templates follow Qwen's ChatML
and Llama 3's header format. Weights are random: the numbers a pipeline computes with
these models are meaningless, only the plumbing is real. Each folder carries a marker
file `mlsafe_tiny.json` so the pipeline can default to fixture data and the phrase judge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MARKER = "mlsafe_tiny.json"
ARCHS = ("qwen2", "llama")

# A little text in the eight languages' scripts (harmless sentences written for this file).
_CORPUS = """
I'm sorry, but I cannot help with that. Sure, here is a short answer. The cat sleeps on the mat.
抱歉，我不能帮助你。当然，这是一个简短的回答。猫在垫子上睡觉。
Xin lỗi, tôi không thể giúp việc đó. Chắc chắn rồi, đây là câu trả lời ngắn. Con mèo ngủ trên thảm.
申し訳ありませんが、お手伝いできません。はい、短い答えです。猫はマットの上で寝ています。
ขออภัย ฉันไม่สามารถช่วยได้ แน่นอน นี่คือคำตอบสั้น ๆ แมวนอนบนเสื่อ
Maaf, saya tidak bisa membantu. Tentu, ini jawaban singkat. Kucing tidur di atas tikar.
দুঃখিত, আমি সাহায্য করতে পারব না। অবশ্যই, এখানে একটি ছোট উত্তর। বিড়ালটি মাদুরের উপর ঘুমায়।
מצטער, אני לא יכול לעזור בזה. בטח, הנה תשובה קצרה. החתול ישן על השטיח.
0 1 2 3 4 5 6 7 8 9 10 42 100 A B C D Answer: Question? [placeholder]
"""

_QWEN_SPECIAL = {"eos": "<|im_end|>", "pad": "<|endoftext|>", "extra": ["<|im_start|>"]}
_LLAMA_SPECIAL = {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>",
                  "extra": ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]}

QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def build_tokenizer(arch: str, vocab_size: int = 800):
    """A byte-level BPE tokenizer with the arch's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = {"qwen2": _QWEN_SPECIAL, "llama": _LLAMA_SPECIAL}[_check_arch(arch)]
    specials = [t for t in (spec.get("bos"), spec["eos"], spec.get("pad")) if t] + spec["extra"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.get("bos"), eos_token=spec["eos"], pad_token=spec.get("pad"),
        additional_special_tokens=spec["extra"],
    )
    fast.chat_template = QWEN_TEMPLATE if arch == "qwen2" else LLAMA_TEMPLATE
    return fast


def build_model(arch: str, tokenizer, *, seed: int = 0, hidden: int = 64, layers: int = 2,
                d_ff: int = 128, heads: int = 4, kv_heads: int = 2, init_std: float = 0.3):
    """A randomly initialised causal LM of the arch, sized to `tokenizer`, seeded.

    init_std is larger than the usual 0.02 so that greedy outputs differ between prompts.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[_check_arch(arch)]
    config = cls(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=d_ff,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build(out_dir: str | Path, *, seed: int = 0, archs: tuple[str, ...] = ARCHS) -> dict[str, Path]:
    """Build and save the tiny models under out_dir/<arch>; returns {arch: folder}."""
    out = {}
    for arch in archs:
        folder = Path(out_dir) / arch
        tokenizer = build_tokenizer(arch)
        model = build_model(arch, tokenizer, seed=seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        marker = {"mlsafe_tiny": True, "arch": arch, "seed": seed,
                  "note": "randomly initialised test model built by mlsafe.tiny; outputs are "
                          "meaningless. Use fixture data (DATA=fixtures) and the phrase judge."}
        (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        out[arch] = folder
    return out


def is_tiny(folder: str | Path) -> bool:
    """True when `folder` is a model built by this module (it has the marker file)."""
    return (Path(folder) / MARKER).is_file()


def _check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; use one of {', '.join(ARCHS)}")
    return arch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write <out_dir>/qwen2 and <out_dir>/llama into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for arch, folder in build(args.out_dir, seed=args.seed).items():
        print(f"{arch}: {folder}")


if __name__ == "__main__":
    main()
