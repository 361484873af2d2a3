"""Multi-layer edits fitted in sequence (mlsafe.stack) on a tiny random Qwen2 model."""

from __future__ import annotations

import pytest
import torch

from mlsafe import tiny, transfer
from mlsafe.edit import EditFileError, SparseEdit, fingerprint
from mlsafe.prompts import Prompt
from mlsafe.stack import EditStack, check_layers, fit_sequence

TOPICS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
LAYERS = (0, 2)


def _anchors():
    """Parallel abstract prompts: harmful ones share a marker word, harmless ones another."""
    harmful, harmless = [], []
    for i, topic in enumerate(TOPICS):
        for lang in ("en", "th"):
            harmful.append(Prompt(f"h{i}-{lang}", lang, f"[{lang}] forbidden request {topic} now", True,
                                  f"h{i}", response="sorry no" if lang == "en" else None))
            harmless.append(Prompt(f"s{i}-{lang}", lang, f"[{lang}] kind question {topic} please", False,
                                   f"s{i}", answer=str(i), response=f"answer {i}"))
    return harmful, harmless


CFG = transfer.EditConfig(targets=["th"], rank=4, gamma=0.1, lam=1e-4, val_fraction=0.0, layer=0,
                          neuron_set="gap", neuron_k=16, stats_pass="fused")


@pytest.fixture(scope="module")
def fitted():
    tok = tiny.build_tokenizer("qwen2")
    model = tiny.build_model("qwen2", tok, seed=0, layers=3)
    harmful, harmless = _anchors()
    stack, reports = fit_sequence(model, tok, harmful, harmless, CFG, LAYERS)
    return model, tok, stack, reports


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_sequence_fits_each_layer_on_the_edited_model(fitted):
    model, _, stack, reports = fitted
    first, second = stack.edits
    assert stack.layers == LAYERS == tuple(r.layer for r in reports)
    assert stack.n_neurons == 32 and first.neurons.numel() == second.neurons.numel() == 16
    assert first.base_fingerprint == fingerprint(model, 0)
    with first.applied(model):
        edited = fingerprint(model, 2)
    assert second.base_fingerprint == edited != fingerprint(model, 2)
    assert stack.fraction_of_parameters(model) == pytest.approx(
        first.fraction_of_parameters(model) + second.fraction_of_parameters(model))


def test_apply_and_revert_are_bit_exact(fitted):
    model, _, stack, _ = fitted
    before = _state(model)
    with stack.applied(model):
        inside = _state(model)
        changed = {k for k in before if not torch.equal(before[k], inside[k])}
        assert changed == {f"model.layers.{layer}.mlp.{m}_proj.weight" for layer in LAYERS for m in ("gate", "up")}
    assert _equal(before, _state(model))
    handle = stack.apply(model)
    handle.revert()
    handle.revert()   # a second revert does nothing
    assert _equal(before, _state(model))


def test_out_of_order_or_alone_refuses_and_leaves_the_model_unedited(fitted):
    model, _, stack, _ = fitted
    first, second = stack.edits
    before = _state(model)
    with pytest.raises(ValueError, match="refusing to apply"):
        second.apply(model)          # the second step alone, on the unedited model
    with pytest.raises(ValueError, match="step 1 of 2 .layer 2."):
        EditStack((second, first)).apply(model)
    bad = SparseEdit(layer=2, modules=second.modules, neurons=second.neurons, factors=second.factors,
                     hparams=second.hparams, base_fingerprint="0" * 64, model_type=second.model_type)
    with pytest.raises(ValueError, match="step 2 of 2"):   # step 1 applied, then reverted
        EditStack((first, bad)).apply(model)
    assert _equal(before, _state(model))
    with stack.applied(model):   # nothing is left marked as applied
        pass
    other = tiny.build_model("qwen2", tiny.build_tokenizer("qwen2"), seed=1, layers=3)
    with pytest.raises(ValueError, match="step 1 of 2"):
        stack.apply(other)


def test_save_load_round_trip(fitted, tmp_path):
    _, _, stack, _ = fitted
    path = tmp_path / "stack.safetensors"
    stack.save(path)
    loaded = EditStack.load(path)
    assert loaded.layers == stack.layers
    for a, b in zip(stack.edits, loaded.edits):
        assert torch.equal(a.neurons, b.neurons) and a.modules == b.modules
        assert all(torch.equal(x, y) for m in a.modules for x, y in zip(a.factors[m], b.factors[m]))
        assert (a.hparams, a.base_fingerprint, a.model_type) == (b.hparams, b.base_fingerprint, b.model_type)
    assert loaded.to_bytes() == stack.to_bytes() == path.read_bytes()
    stack.save(path)   # a rerun replaces its own file
    single = EditStack(stack.edits[:1])   # one step: the single-edit file format
    single.save(tmp_path / "one.safetensors")
    assert SparseEdit.load(tmp_path / "one.safetensors").to_bytes() == stack.edits[0].to_bytes()
    assert EditStack.load(tmp_path / "one.safetensors").layers == (0,)
    (tmp_path / "weights.bin").write_bytes(b"not an edit")
    with pytest.raises(EditFileError, match="not an mlsafe edit"):
        stack.save(tmp_path / "weights.bin")


def test_damaged_files_refuse(fitted, tmp_path):
    _, _, stack, _ = fitted
    raw = bytearray(stack.to_bytes())
    path = tmp_path / "bad.safetensors"
    raw[-1] ^= 0x01                                    # a byte of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(EditFileError, match="corrupt.*content_sha256; re-save or re-fit"):
        EditStack.load(path)
    raw[-1] ^= 0x01
    fp = stack.edits[1].base_fingerprint.encode()
    at = bytes(raw).index(fp)                          # a character of step 2's metadata
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")
    path.write_bytes(bytes(raw))
    with pytest.raises(EditFileError, match="corrupt"):
        EditStack.load(path)
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(EditFileError, match="not a safetensors file"):
        EditStack.load(path)


def test_one_layer_sequence_equals_fit(fitted):
    model, tok, stack, _ = fitted
    harmful, harmless = _anchors()
    seq_stack, reports = fit_sequence(model, tok, harmful, harmless, CFG, [0])
    (seq,) = seq_stack.edits
    assert [r.layer for r in reports] == [0]
    edit, _ = transfer.fit(model, tok, harmful, harmless, CFG)
    assert torch.equal(seq.neurons, edit.neurons) and seq.base_fingerprint == edit.base_fingerprint
    for m in edit.modules:
        assert all(torch.equal(x, y) for x, y in zip(seq.factors[m], edit.factors[m]))
    assert torch.equal(stack.edits[0].factors["gate"][0], edit.factors["gate"][0])
    continued, reports = fit_sequence(model, tok, harmful, harmless, CFG, [2], start=seq_stack)
    assert continued.layers == LAYERS and [r.layer for r in reports] == [2]
    assert continued.to_bytes() == stack.to_bytes()   # a continued prefix gives the same stack


def test_bad_layers_refuse_before_any_work(fitted):
    assert check_layers([17, 19], 24) == (17, 19)
    for layers, match in (([], "at least one"), ([3, 3], "more than once"), ([1, 24], "out of range.*0..23"),
                          ([-1], "out of range"), ([1.5], "integers"), (["x"], "integers")):
        with pytest.raises(ValueError, match=match):
            check_layers(layers, 24)
    with pytest.raises(ValueError, match="out of range"):   # checked before transfer.fit runs
        fit_sequence(tiny.build_model("qwen2", tiny.build_tokenizer("qwen2"), layers=3), None, [], [], CFG, [5])
    model, _, stack, _ = fitted
    with pytest.raises(ValueError, match="more than once"):   # a layer the start stack already edits
        fit_sequence(model, None, [], [], CFG, [1, 2], start=stack)


def _one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture
def no_progress_bars():
    """transformers' weight-loading bar writes to stderr; the error line is what is checked."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


def test_cli_edit_layers_then_apply_merged(tiny_dir, tmp_path, capsys, no_progress_bars):
    import json

    from transformers import AutoModelForCausalLM

    from mlsafe.__main__ import main

    out = tmp_path / "stack"
    assert main(["edit", str(tiny_dir), "--lang", "th", "--out", str(out), "--data", "fixtures",
                 "--layers", "1,0", "--rank", "4"]) == 0
    stack = EditStack.load(out / "edit.safetensors")
    rec = json.loads((out / "reproduce.json").read_text())
    assert stack.layers == (1, 0) and rec["layers"] == [1, 0] and rec["n_neurons"] == stack.n_neurons > 0
    assert rec["step_fingerprints"] == [e.base_fingerprint for e in stack.edits]
    assert rec["validation"]["first_token_kl"]["th"] > 0
    assert "| layers | 1, 0 (fitted in this order" in (out / "README.md").read_text()

    merged = tmp_path / "merged"
    assert main(["apply", str(out / "edit.safetensors"), str(tiny_dir), "--save-merged", str(merged)]) == 0
    assert "layers 1,0" in capsys.readouterr().out
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with stack.applied(base):
        assert _equal(_state(base), _state(plain))
    assert main(["apply", str(out / "edit.safetensors"), str(tiny_dir), "--save-adapter", str(tmp_path / "a")]) == 2
    _one_line_error(capsys, "--save-merged")
    audit = tmp_path / "audit.json"   # audit --edit takes a stack file too (every step applied in order)
    assert main(["audit", str(tiny_dir), "--langs", "en,th", "--data", "fixtures", "--n", "2",
                 "--edit", str(out / "edit.safetensors"), "--out", str(audit)]) == 0
    capsys.readouterr()
    assert all(v > 0 for v in json.loads(audit.read_text())["first_token_kl"].values())
    for extra, needle in ((["--layers", "1,1"], "more than once"), (["--layers", "0,7"], "out of range"),
                          (["--layers", "1,x"], "comma-separated"), (["--layer", "1", "--layers", "0,1"], "not both")):
        assert main(["edit", str(tiny_dir), "--lang", "th", "--out", str(tmp_path / "e"), "--data", "fixtures",
                     *extra]) == 2
        _one_line_error(capsys, needle)
    assert not (tmp_path / "e").exists() and not (tmp_path / "a").exists()
