"""mlsafe.tiny: offline tiny Qwen2 / Llama folders that load, template and generate."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mlsafe import tiny
from mlsafe.evaluate import format_chat, generate

torch.set_num_threads(1)

SAMPLES = ["Hello", "你好", "Xin chào", "こんにちは", "สวัสดี", "Halo", "হ্যালো", "שלום"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_saved_folder_loads_offline_and_generates(folders, arch):
    folder = folders[arch]
    marker = json.loads((folder / tiny.MARKER).read_text())
    assert marker["mlsafe_tiny"] is True and marker["arch"] == arch and tiny.is_tiny(folder)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert model.config.model_type == arch
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.intermediate_size) == (64, 2, 128)
    for text in SAMPLES:  # byte-level BPE round-trips every script exactly
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    chat = format_chat(tok, ["hi"])[0]
    assert chat.endswith("<|im_start|>assistant\n" if arch == "qwen2"
                         else "<|start_header_id|>assistant<|end_header_id|>\n\n")
    out1 = generate(model, tok, SAMPLES, max_new_tokens=6, batch_size=3, progress=False)
    out2 = generate(model, tok, SAMPLES, max_new_tokens=6, batch_size=3, progress=False)
    assert out1 == out2 and len(out1) == len(SAMPLES)
    assert len(set(out1)) > 1  # init_std makes outputs prompt-dependent


def test_llama_has_no_pad_token_like_llama3(folders):
    tok = AutoTokenizer.from_pretrained(folders["llama"], local_files_only=True)
    assert tok.pad_token is None and tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>"
    fmt = format_chat(tok, ["x"])[0]
    assert fmt.startswith("<|begin_of_text|><|start_header_id|>user")


def test_build_is_seed_deterministic():
    tok = tiny.build_tokenizer("qwen2")
    assert tok.get_vocab() == tiny.build_tokenizer("qwen2").get_vocab()
    a = tiny.build_model("qwen2", tok, seed=3).state_dict()
    b = tiny.build_model("qwen2", tok, seed=3).state_dict()
    c = tiny.build_model("qwen2", tok, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="qwen2, llama"):
        tiny.build_tokenizer("gpt2")
