"""mlsafe.arch: the registry finds the right weights, in the right layout, for every type."""

import pytest
import torch

from mlsafe import arch
from tiny import D_FF, D_MODEL, MODEL_TYPES, N_LAYERS, tiny_model

torch.set_num_threads(1)

REQUIRED = {"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2"}


def test_registry_covers_the_required_types():
    assert REQUIRED <= set(arch.SUPPORTED)


@pytest.mark.parametrize("bad", ["bert", "llama-ish", "qwen"])
def test_unknown_type_lists_supported(bad):
    with pytest.raises(ValueError, match="supported: .*llama.*qwen2"):
        arch.get_arch(bad)


def test_get_arch_accepts_model_config_and_string():
    model = tiny_model("qwen2")
    assert arch.get_arch(model) is arch.get_arch(model.config) is arch.get_arch("qwen2")
    with pytest.raises(ValueError, match="model_type"):
        arch.get_arch(object())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_shapes_and_views(model_type):
    model = tiny_model(model_type)
    assert (arch.n_layers(model), arch.d_model(model), arch.d_ff(model)) == (N_LAYERS, D_MODEL, D_FF)
    params = {p.data_ptr() for p in model.parameters()}
    for which in arch.get_arch(model).editable + ("down",):
        w = arch.neuron_weight(model, 1, which)
        assert w.shape == (D_FF, D_MODEL)
        assert w.untyped_storage().data_ptr() in params  # a view of a real parameter
        before = w[3].clone()
        with torch.no_grad():
            w[3] += 1.0
        assert torch.equal(arch.neuron_weight(model, 1, which)[3], before + 1.0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_rows_are_neurons(model_type):
    """mlp(x) == sum_j a_j(x) * down_row_j (+ bias): the rows of 'down' belong to neurons."""
    model = tiny_model(model_type)
    x = torch.randn(3, D_MODEL)
    with torch.no_grad():
        a = arch.activations_from_inputs(model, 0, x)
        out = a @ arch.neuron_weight(model, 0, "down")
        bias = arch.down_module(model, 0).bias
        if bias is not None:
            out = out + bias
        assert torch.allclose(arch.mlp(model, 0)(x), out, atol=1e-6)
        up = x @ arch.neuron_weight(model, 0, "up").T
        if arch.get_arch(model).gate is None:
            up = up + arch.mlp(model, 0).c_fc.bias
            assert torch.allclose(a, arch.mlp(model, 0).act(up), atol=1e-6)
        else:
            gate = x @ arch.neuron_weight(model, 0, "gate").T
            assert torch.allclose(a, up * getattr(arch.mlp(model, 0), arch.get_arch(model).act)(gate),
                                  atol=1e-6)


def test_gpt2_is_transposed_and_not_gated():
    model = tiny_model("gpt2")
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert c_fc.shape == (D_MODEL, D_FF)
    assert torch.equal(arch.neuron_weight(model, 0, "up"), c_fc.T)
    with pytest.raises(ValueError, match="non-gated.*which='up'"):
        arch.neuron_weight(model, 0, "gate")


def test_phi3_gate_and_up_are_halves_of_the_fused_projection():
    model = tiny_model("phi3")
    fused = model.model.layers[0].mlp.gate_up_proj.weight
    assert torch.equal(arch.neuron_weight(model, 0, "gate"), fused[:D_FF])
    assert torch.equal(arch.neuron_weight(model, 0, "up"), fused[D_FF:])


def test_bare_base_model_and_bad_arguments():
    model = tiny_model("llama")
    assert arch.blocks(model.model) == arch.blocks(model)
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 2\)"):
        arch.mlp(model, 2)
    with pytest.raises(ValueError, match="which must be one of"):
        arch.neuron_weight(model, 0, "value")
