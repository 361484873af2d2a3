"""mlsafe.export on tiny random models of every registered architecture: the merged folder,
the PEFT adapter and the in-memory edit give the same logits; only the edited rows change."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mlsafe import arch, export
from mlsafe.edit import SparseEdit, fingerprint
from mlsafe.errors import UserError
from tests.tiny import MODEL_TYPES, tiny_model, tiny_tokenizer

LAYER = 1


def random_edit(model, seed: int = 0, rank: int = 3, m: int = 7) -> SparseEdit:
    """A nonzero edit of m neurons at LAYER on every editable module of the model."""
    g = torch.Generator().manual_seed(seed)
    spec = arch.get_arch(model)
    d_in, d_ff = arch.d_model(model), arch.d_ff(model)
    neurons = torch.randperm(d_ff, generator=g)[:m]
    factors = {mod: (torch.randn(d_in, rank, generator=g) * 0.5, torch.randn(rank, m, generator=g) * 0.5)
               for mod in spec.editable}
    return SparseEdit(layer=LAYER, modules=spec.editable, neurons=neurons, factors=factors, hparams={},
                      base_fingerprint=fingerprint(model, LAYER), model_type=spec.model_type)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_merged_adapter_and_edit_agree(model_type, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = tiny_model(model_type)
    edit = random_edit(model)
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(1))
    base_logits, base_weights = logits(model, ids), weights(model)
    with edit.applied(model):
        edited_logits = logits(model, ids)
    assert (edited_logits - base_logits).abs().max() > 1e-3  # the edit changes the output

    merged = export.save_merged(edit, model, tiny_tokenizer(), tmp_path / "merged")
    adapter = export.save_adapter(edit, model, tmp_path / "adapter")
    after = weights(model)
    assert all(torch.equal(after[k], base_weights[k]) for k in base_weights)  # bit-exact revert
    import os
    mask = os.umask(0)
    os.umask(mask)
    for folder in (merged, adapter):   # every file gets the umask's mode (safetensors writes 0600)
        modes = {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir() if f.is_file()}
        assert modes and set(modes.values()) == {0o666 & ~mask}, modes
    with edit.applied(model):  # the model is still the edit's base
        pass

    loaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(loaded, ids), edited_logits, rtol=1e-5, atol=1e-5)
    # only rows S of the edited projections at LAYER differ from the base
    changed = {k for k, v in loaded.state_dict().items() if not torch.equal(v, base_weights[k])}
    edited_views = {m: arch.neuron_weight(loaded, LAYER, m) for m in edit.modules}
    expected = {k for k, p in loaded.named_parameters()
                if any(p.data_ptr() <= v.data_ptr() < p.data_ptr() + p.numel() * p.element_size()
                       for v in edited_views.values())}
    assert changed == expected and changed
    for m, view in edited_views.items():
        base_view = arch.neuron_weight(model, LAYER, m)
        rows = torch.ones(view.shape[0], dtype=torch.bool)
        rows[edit.neurons] = False
        assert torch.equal(view[rows], base_view[rows])
        torch.testing.assert_close(view[edit.neurons].double() - base_view[edit.neurons].double(),
                                   edit.delta(m).T, rtol=0, atol=1e-5)

    peft_model = PeftModel.from_pretrained(tiny_model(model_type), adapter).eval()
    torch.testing.assert_close(logits(peft_model, ids), edited_logits, rtol=1e-5, atol=1e-5)
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if "lora_" in n)
    assert n_lora == len(load_file(adapter / export.ADAPTER_WEIGHTS)) > 0  # every saved tensor was used


@pytest.mark.parametrize("model_type", ["qwen2", "gpt2"])
def test_refuses_a_non_empty_folder_and_a_foreign_model(model_type, tmp_path):
    model = tiny_model(model_type)
    edit = random_edit(model)
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes(b"user's model")
    with pytest.raises(UserError, match="not an empty folder"):
        export.save_merged(edit, model, tiny_tokenizer(), full)
    with pytest.raises(UserError, match="not an empty folder"):
        export.save_adapter(edit, model, full)
    assert (full / "model.safetensors").read_bytes() == b"user's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary folder left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export.save_adapter(edit, model, empty) / export.ADAPTER_CONFIG).is_file()
    with pytest.raises(ValueError, match="fingerprint"):
        export.save_adapter(edit, tiny_model(model_type, seed=1), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_failed_save_leaves_no_folder_and_reverts(tmp_path):
    model = tiny_model("llama")
    edit = random_edit(model)
    before = weights(model)

    class Broken:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export.save_merged(edit, model, Broken(), tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []
    assert all(torch.equal(v, before[k]) for k, v in weights(model).items())
