"""The LoRA baseline on `peft` (mlsafe.baselines.finetune): training, dense delta, exact revert."""

from __future__ import annotations

import pytest
import torch
from test_baselines import tiny_setup
from tiny import MODEL_TYPES, tiny_model

from mlsafe.baselines import finetune

CFG = finetune.SFTConfig(steps=20, batch_size=8, lr=1e-2, seed=3)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    lm, suite = tiny_setup()
    examples = finetune.sft_examples(lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, ["th"])
    return lm, examples


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_base(model, snap, modules, flags):
    """Every parameter bit-equal to the snapshot; no peft layer or attribute left behind."""
    now = dict(model.named_parameters())
    assert set(now) == set(snap)
    assert all(torch.equal(now[n], snap[n]) for n in snap)
    assert [type(m) for m in model.modules()] == modules
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not hasattr(model, "peft_config")


def _ids(seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(3, 100, shape, generator=torch.Generator().manual_seed(seed))


def test_loss_decreases_and_the_base_is_restored_bit_exact(setup):
    lm, examples = setup
    model = lm.model
    snap, modules = _snapshot(model), [type(m) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    trainer = finetune.LoRATrainer(model, examples, CFG, pad_id=0)
    losses = trainer.train(CFG.steps)
    assert len(losses) == CFG.steps == trainer.steps_done
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    _assert_base(model, snap, modules, flags)
    delta = trainer.delta()
    assert any(d.abs().max() > 0 for d in delta.deltas.values())     # B moved off zero
    with delta.applied(model):
        assert not all(torch.equal(p, snap[n]) for n, p in model.named_parameters())
    _assert_base(model, snap, modules, flags)


def test_dense_delta_equals_the_peft_model(setup):
    lm, examples = setup
    model = lm.model
    snap, modules = _snapshot(model), [type(m) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    trainer = finetune.LoRATrainer(model, examples, CFG, pad_id=0)
    trainer.train(10)
    ids = _ids()
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with trainer.adapted() as peft_model:
            assert sum(1 for m in model.modules() if hasattr(m, "lora_A")) == len(trainer.adapters)
            via_peft = peft_model(input_ids=ids).logits
        with trainer.delta().applied(model):
            via_delta = model(input_ids=ids).logits
    assert not torch.allclose(via_peft, base, atol=1e-4)            # the adapter does something
    torch.testing.assert_close(via_delta, via_peft, atol=1e-5, rtol=1e-5)
    _assert_base(model, snap, modules, flags)


def test_training_in_chunks_equals_one_run(setup):
    """Adam state and the batch generator survive the unload between `train` calls."""
    lm, examples = setup
    whole = finetune.LoRATrainer(lm.model, examples, CFG, pad_id=0)
    whole.train(12)
    parts = finetune.LoRATrainer(lm.model, examples, CFG, pad_id=0)
    parts.train(5)
    parts.train(0)
    parts.train(7)
    assert parts.losses == whole.losses and parts.tokens == whole.tokens
    a, b = whole.delta().deltas, parts.delta().deltas
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_layers_and_modules_choose_what_peft_adapts(setup):
    lm, examples = setup
    cfg = finetune.SFTConfig(steps=2, batch_size=4, modules=("up",), layers=(1,), rank=2)
    trainer = finetune.LoRATrainer(lm.model, examples, cfg, pad_id=0)
    assert trainer.lora_config["layers_to_transform"] == [1]
    trainer.train(2)
    delta = trainer.delta()
    assert list(delta.deltas) == ["model.layers.1.mlp.up_proj.weight"]
    up = lm.model.model.layers[1].mlp.up_proj
    assert delta.deltas["model.layers.1.mlp.up_proj.weight"].shape == up.weight.shape
    assert trainer.trainable_parameters() == 2 * (up.in_features + up.out_features)
    assert delta.fraction_of_parameters(lm.model) == pytest.approx(
        up.weight.numel() / sum(p.numel() for p in lm.model.parameters()))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_architecture_adapts_and_reverts_or_is_refused(model_type):
    model = tiny_model(model_type)
    ex = [finetune.Example(_ids(1, (12,)).tolist(), 4), finetune.Example(_ids(2, (8,)).tolist(), 3)]
    cfg = finetune.SFTConfig(steps=3, batch_size=2, lr=1e-2)
    if model_type in ("gpt2", "phi3"):            # Conv1D / fused gate_up: not separate Linears
        with pytest.raises(ValueError, match="separate gate/up/down"):
            finetune.LoRATrainer(model, ex, cfg)
        return
    snap, modules = _snapshot(model), [type(m) for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    trainer = finetune.LoRATrainer(model, ex, cfg)
    trainer.train(cfg.steps)
    ids = _ids()
    with torch.no_grad():
        with trainer.adapted() as peft_model:
            via_peft = peft_model(input_ids=ids).logits
        with trainer.delta().applied(model):
            via_delta = model(input_ids=ids).logits
    torch.testing.assert_close(via_delta, via_peft, atol=1e-5, rtol=1e-5)
    _assert_base(model, snap, modules, flags)
