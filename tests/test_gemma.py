"""Fast tests of mlsafe.gemma: checksum refusal, chat template, data splits, response-only loss."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import pytest
import torch

from mlsafe.gemma import checkpoint, data, sft
from mlsafe.langs import LANGS

SCRIPTS = {  # a character class every prompt of the language must contain
    "zh": r"[\u4e00-\u9fff]", "ja": r"[\u3040-\u30ff\u4e00-\u9fff]", "th": r"[\u0e00-\u0e7f]",
    "bn": r"[\u0980-\u09ff]", "he": r"[\u0590-\u05ff]", "vi": r"[\u00c0-\u1ef9]", "en": r"[A-Za-z]",
    "id": r"[A-Za-z]",
}


@pytest.fixture(scope="module")
def splits():
    return {s: data.build_split(s, seed=0) for s in data.SPLITS}


# ---------------------------------------------------------------- checkpoint


def _sums(tmp_path, name, digest):
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{digest}  {name}\n")
    return sums


def test_sha256_accepts_matching_file(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    sums = _sums(tmp_path, f.name, hashlib.sha256(f.read_bytes()).hexdigest())
    assert checkpoint.verify_sha256(f, sums) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_sha256_refuses_corrupted_file(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    sums = _sums(tmp_path, f.name, hashlib.sha256(f.read_bytes()).hexdigest())
    f.write_bytes(b"GGUF" + bytes(range(256)) * 9)  # truncated
    with pytest.raises(ValueError, match="sha256 mismatch.*delete it"):
        checkpoint.verify_sha256(f, sums)


def test_sha256_refuses_unlisted_file(tmp_path):
    f = tmp_path / "other.gguf"
    f.write_bytes(b"x")
    sums = _sums(tmp_path, "model.gguf", "0" * 64)
    with pytest.raises(ValueError, match="lists no digest for 'other.gguf'"):
        checkpoint.verify_sha256(f, sums)


def test_packaged_sums_list_the_gguf():
    pkg = pytest.importorskip(checkpoint.GGUF_PACKAGE, reason="optional extra mlsafe[gemma] not installed")
    from importlib.resources import files
    sums = files(checkpoint.GGUF_PACKAGE).joinpath("data", "SHA256SUMS")
    assert checkpoint.expected_sha256(sums, pkg.MODEL_NAME) == pkg.EXPECTED_SHA256


def test_chat_template_renders_gemma_turns():
    from transformers.utils.chat_template_utils import _compile_jinja_template
    text = _compile_jinja_template(checkpoint.CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": " Hi there "}, {"role": "assistant", "content": "Sure."}],
        bos_token="<bos>", add_generation_prompt=False)
    assert text == ("<bos><start_of_turn>user\nHi there<end_of_turn>\n"
                    "<start_of_turn>model\nSure.<end_of_turn>\n")
    prompt = _compile_jinja_template(checkpoint.CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": "Hi"}], bos_token="<bos>", add_generation_prompt=True)
    assert prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")


# ---------------------------------------------------------------- data


def test_all_languages_in_real_scripts(splits):
    for split in ("anchor", "eval"):
        langs = {p.lang for p in splits[split]}
        assert langs == set(LANGS)
        for p in splits[split]:
            assert re.search(SCRIPTS[p.lang], p.text), (p.lang, p.text)
    en = {p.parallel_id: p.text for p in splits["eval"] if p.lang == "en"}
    same = [p.text for p in splits["eval"] if p.lang == "id" and p.text == en[p.parallel_id]]
    assert not same, f"untranslated Indonesian prompts: {same[:3]}"


def test_anchor_and_eval_are_parallel(splits):
    for split in ("anchor", "eval"):
        groups = {}
        for p in splits[split]:
            groups.setdefault(p.parallel_id, []).append(p)
        for pid, ps in groups.items():
            assert sorted(p.lang for p in ps) == sorted(LANGS), pid
            assert len({(p.harmful, p.answer) for p in ps}) == 1, pid
    ev = splits["eval"]
    for lang in LANGS:
        assert sum(p.lang == lang and p.harmful for p in ev) >= 40
        assert sum(p.lang == lang and not p.harmful for p in ev) >= 40


def test_splits_disjoint_in_templates_and_fillers(splits):
    texts = {s: {p.text for p in ps} for s, ps in splits.items()}
    assert not texts["train"] & texts["anchor"] and not texts["train"] & texts["eval"]
    assert not texts["anchor"] & texts["eval"]
    for table in (data.PERSON_TEMPLATES, data.OBJECT_TEMPLATES, data.PERSON_FILLERS, data.OBJECT_FILLERS):
        a, e = ({d["en"] for d in table[s]} for s in ("anchor", "eval"))
        assert not a & e
    train_fill = set(data.TRAIN_PERSON_FILLERS_EN) | set(data.TRAIN_OBJECT_FILLERS_EN)
    held_fill = {d["en"] for t in (data.PERSON_FILLERS, data.OBJECT_FILLERS) for s in t for d in t[s]}
    assert not train_fill & held_fill
    arith = {s: {t["en"] for _, t in data.ARITH_TEMPLATES[s]} for s in data.SPLITS}
    assert not arith["train"] & arith["anchor"] and not arith["train"] & arith["eval"]
    assert not {q for q, _ in data.NEAR_MISS_TRAIN_EN} & {d["en"] for d in data.NEAR_MISS_EVAL}


def test_train_split_is_english_only_for_safety(splits):
    train = splits["train"]
    harmful = [p for p in train if p.harmful]
    assert harmful and all(p.lang == "en" for p in harmful)
    assert all(sft.is_refusal(p.response) for p in harmful)
    harmless = [p for p in train if not p.harmful]
    assert {p.lang for p in harmless} == set(LANGS)
    assert not any(sft.is_refusal(p.response) for p in harmless)
    for p in harmless:
        if p.answer is not None:  # arithmetic answers are right
            assert p.response == p.answer and p.answer.isdigit()


def test_howto_answers_are_native_text_in_every_language(splits):
    from mlsafe.gemma.howto import OPENERS

    assert not any("-howto" in p.id for p in splits["train"])  # the default tune has none
    train = data.build_split("train", n_howto_train=18, arith_per_template=6)
    howto = [p for p in train + splits["anchor"] if "-howto" in p.id]
    assert {p.lang for p in howto} == set(LANGS) and len(howto) == 24 * len(LANGS)
    for p in howto:
        assert p.response.startswith(OPENERS[p.lang]) and not p.harmful and p.answer is None, p.id
        assert re.search(SCRIPTS[p.lang], p.response), (p.lang, p.response)
    assert sum(p.answer is not None for p in train) == 4 * 6 * len(LANGS)
    with pytest.raises(ValueError, match="n_howto_train must lie in 0..18"):
        data.build_split("train", n_howto_train=19)


def test_arithmetic_answers_are_correct(splits):
    for p in splits["eval"]:
        if p.lang == "en" and p.answer is not None:
            nums = [int(n) for n in re.findall(r"\d+", p.text)]
            assert int(p.answer) in {nums[0] + 1, nums[0] - 1} | (
                {nums[0] + nums[1], abs(nums[0] - nums[1]), nums[0] * nums[1]} if len(nums) == 2 else set()), p.text


def test_build_split_deterministic_and_validates():
    a, b = data.build_split("train", seed=3), data.build_split("train", seed=3)
    assert a == b
    assert a != data.build_split("train", seed=4)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        data.build_split("test")
    with pytest.raises(ValueError, match="ask for n <="):
        data.build_split("train", n_harmful_train=10_000)


# ---------------------------------------------------------------- sft


def test_is_refusal():
    assert sft.is_refusal("I can't help with that.") and sft.is_refusal("Sorry, but no")
    assert sft.is_refusal("I cannot help") and sft.is_refusal("I won't help")
    assert not sft.is_refusal("Sure. Use the kill command.") and not sft.is_refusal("12")
    assert not sft.is_refusal("I think the answer is 12")


def test_cache_key_tracks_config_and_data():
    cfg = sft.TuneConfig()
    ex = sft.training_examples(cfg)
    k = sft.cache_key(cfg, ex)
    assert k == sft.cache_key(cfg, list(ex))
    assert k != sft.cache_key(replace(cfg, lr=2e-5), ex)
    assert k != sft.cache_key(cfg, ex[:-1])


def _tiny_gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                           max_position_embeddings=64, sliding_window=8)
    return Gemma3ForCausalLM(cfg).eval()


def test_response_loss_equals_masked_full_loss():
    model = _tiny_gemma()
    batch = [([2, 5, 6, 7, 8, 9, 10], 4), ([2, 11, 12, 13, 14], 3)]
    got = sft.response_loss(model, batch, pad_id=0)
    # Reference: full logits, labels masked to the response tokens (-100 elsewhere).
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (seq, start) in enumerate(batch):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, start:len(seq)] = torch.tensor(seq[start:])
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(got, ref, atol=1e-5)


def test_freeze_keeps_embeddings_fixed():
    model = _tiny_gemma()
    n_all = sft._freeze(model, "all")
    assert not model.model.embed_tokens.weight.requires_grad
    assert n_all == sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    n_mlp = sft._freeze(model, "mlp")
    assert 0 < n_mlp < n_all and not model.model.layers[0].self_attn.q_proj.weight.requires_grad
    with pytest.raises(ValueError, match="train_layers must be"):
        sft._freeze(model, "attn")


def test_start_strings_separate_under_gemma_tokenizer():
    base = checkpoint.gemma_cache() / "base"
    if not (base / "tokenizer.json").exists():
        pytest.skip("cached Gemma checkpoint absent (run mlsafe.gemma.checkpoint.load_gemma once)")
    from transformers import AutoTokenizer
    from mlsafe.evaluate.margin import start_token_sets
    tok = checkpoint.add_chat_template(AutoTokenizer.from_pretrained(base))
    for lang in LANGS:
        r, c = start_token_sets(tok, sft.REFUSAL_STARTS[lang], sft.COMPLY_STARTS[lang])
        assert tok.encode("I", add_special_tokens=False)[0] in r
        assert tok.encode("Sure", add_special_tokens=False)[0] in c
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_stop_at_end_of_turn_adds_eot_once():
    class Tok:
        def convert_tokens_to_ids(self, token):
            assert token == "<end_of_turn>"
            return 42
    model = _tiny_gemma()
    model.generation_config.eos_token_id = 1
    checkpoint.stop_at_end_of_turn(model, Tok())
    checkpoint.stop_at_end_of_turn(model, Tok())
    assert model.generation_config.eos_token_id == [1, 42]


def test_digits_count_as_compliance_starts():
    for lang in LANGS:
        assert set("0123456789") <= set(sft.COMPLY_STARTS[lang]) and "Sure" in sft.COMPLY_STARTS[lang]
        assert not set(sft.REFUSAL_STARTS[lang]) & set(sft.COMPLY_STARTS[lang])
