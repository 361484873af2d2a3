"""Tiny randomly initialised models of every registered architecture, built locally.

No downloads: each model comes from a hand-written config (hidden 32, 2 layers, d_ff 48,
vocab 128) through ``AutoConfig.for_model``; a character-level tokenizer covers
ASCII letters, digits and a little punctuation. Other test files import this module.
"""

from __future__ import annotations

import string

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models

from mlsafe.arch import SUPPORTED

VOCAB = 128
D_MODEL = 32
D_FF = 48
N_LAYERS = 2

_COMMON = dict(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_FF,
               num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
               head_dim=8, max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
               eos_token_id=2, tie_word_embeddings=False)

CONFIGS: dict[str, dict] = {
    **{t: _COMMON for t in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2")},
    "gemma3_text": {**_COMMON, "sliding_window": 4},
    "phi3": {k: v for k, v in _COMMON.items() if k != "head_dim"},
    "gpt2": dict(vocab_size=VOCAB, n_embd=D_MODEL, n_inner=D_FF, n_layer=N_LAYERS, n_head=4,
                 n_positions=128, bos_token_id=2, eos_token_id=2, resid_pdrop=0.0,
                 embd_pdrop=0.0, attn_pdrop=0.0),
}
assert set(CONFIGS) == set(SUPPORTED), "tests/tiny.py needs a config for every registered type"

MODEL_TYPES = tuple(sorted(CONFIGS))


def tiny_model(model_type: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A float32 causal LM of `model_type` in eval mode, initialised from `seed`.

    Skips the calling test when the installed transformers lacks the config class.
    """
    try:
        config = transformers.AutoConfig.for_model(model_type, **CONFIGS[model_type])
    except (KeyError, ValueError) as err:
        pytest.skip(f"transformers {transformers.__version__} has no config for {model_type}: {err}")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.float().eval()


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A character-level tokenizer (ids < VOCAB): <pad>=0, <unk>=1, <eos>=2, then characters."""
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    for ch in string.ascii_letters + string.digits + " .,?!'-":
        vocab[ch] = len(vocab)
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )
