"""Where the MLP neurons live, per architecture: one registry keyed by ``config.model_type``.

The paper (Sec. 3.1) defines a neuron as one unit j of a gated MLP at layer l,

    a_j(x) = (x W_up)_j * act((x W_gate)_j),

with x the MLP input (the output of the norm in front of the MLP). In the paper's
row-vector convention W is d_in x d_out, so the neuron's weights are column j of W;
PyTorch ``nn.Linear`` stores W transposed ([d_out, d_in]), so they are row j of
``weight``. GPT-2's ``Conv1D`` stores W itself ([d_in, d_out]); its MLP is not gated
and its neurons are the ``c_fc`` outputs after the activation.

:func:`neuron_weight` hides these layouts: it always returns a view shaped
[d_ff, d_model] whose row j belongs to neuron j, so ``neuron_weight(...)[S].T`` is the
paper's W_S (d_in x m) and writing rows of the view writes the model's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

WHICH = ("gate", "up", "down")


@dataclass(frozen=True)
class ArchSpec:
    """Module names of one architecture.

    blocks:  dotted path from the causal-LM wrapper to the list of decoder layers
             (the path without its first part is tried for a bare base model).
    mlp:     attribute of a decoder layer holding the MLP; the MLP's forward input is x.
    gate:    attribute of the MLP computing the gate pre-activations (None: not gated).
    up:      attribute of the MLP computing the up (value) pre-activations.
    down:    attribute of the MLP projecting back; its forward input is the neuron
             activations a(x) (the probe hooks it).
    act:     attribute of the MLP holding the activation function.
    fused:   gate and up are one Linear whose output rows are [gate; up] (phi3).
    conv1d:  weights stored [d_in, d_out] (GPT-2 ``Conv1D``), not [d_out, d_in].
    """

    model_type: str
    blocks: str
    mlp: str
    gate: str | None
    up: str
    down: str
    act: str
    fused: bool = False
    conv1d: bool = False

    @property
    def editable(self) -> tuple[str, ...]:
        """The input projections an edit may touch: ("gate", "up"), or ("up",) if not gated."""
        return ("up",) if self.gate is None else ("gate", "up")


def _gated(model_type: str, act: str = "act_fn") -> ArchSpec:
    return ArchSpec(model_type, "model.layers", "mlp", "gate_proj", "up_proj", "down_proj", act)


_REGISTRY: dict[str, ArchSpec] = {
    **{t: _gated(t) for t in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text")},
    "phi3": ArchSpec("phi3", "model.layers", "mlp", "gate_up_proj", "gate_up_proj", "down_proj",
                     "activation_fn", fused=True),
    "gpt2": ArchSpec("gpt2", "transformer.h", "mlp", None, "c_fc", "c_proj", "act", conv1d=True),
}

SUPPORTED: tuple[str, ...] = tuple(sorted(_REGISTRY))


def get_arch(model_or_config) -> ArchSpec:
    """The ArchSpec of a model, a config, or a ``model_type`` string.

    Raises ValueError listing SUPPORTED for any other model_type.
    """
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
        if model_type is None:
            raise ValueError(
                f"cannot read config.model_type from {type(model_or_config).__name__}; "
                "pass a transformers model, its config, or a model_type string"
            )
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED)}. "
            "Add an ArchSpec for it to mlsafe.arch._REGISTRY"
        ) from None


def _walk(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of `model` (a causal LM or its bare base model)."""
    spec = get_arch(model)
    for path in (spec.blocks, spec.blocks.split(".", 1)[1]):
        try:
            return list(_walk(model, path))
        except AttributeError:
            continue
    raise ValueError(
        f"{type(model).__name__} has no decoder layers at {spec.blocks!r}; pass the "
        f"{spec.model_type} causal LM (AutoModelForCausalLM) or its base model"
    )


def n_layers(model: nn.Module) -> int:
    return len(blocks(model))


def _layer_index(model: nn.Module, layer: int) -> int:
    n = n_layers(model)
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer must be an int in [0, {n}) for this {n}-layer model, got {layer!r}")
    return layer


def mlp(model: nn.Module, layer: int) -> nn.Module:
    """The MLP module of `layer`; its forward input is the MLP input x."""
    return getattr(blocks(model)[_layer_index(model, layer)], get_arch(model).mlp)


def down_module(model: nn.Module, layer: int) -> nn.Module:
    """The output projection of `layer`'s MLP; its forward input is the activations a(x)."""
    return getattr(mlp(model, layer), get_arch(model).down)


def neuron_weight(model: nn.Module, layer: int, which: str) -> torch.Tensor:
    """A view [d_ff, d_model] of `layer`'s weights whose row j belongs to neuron j.

    which="gate"/"up": row j computes neuron j's pre-activation from x (column j of
    the paper's W, eq. 4). which="down": row j is what neuron j writes to the
    residual stream (column j of W_down, transposed). Writing into the view writes
    the model's parameter. GPT-2 has no "gate" (ValueError).
    """
    spec = get_arch(model)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    module = mlp(model, layer)
    if which == "gate" and spec.gate is None:
        raise ValueError(
            f"{spec.model_type} has a non-gated MLP: its neurons are the {spec.up} outputs; "
            "use which='up'"
        )
    name = {"gate": spec.gate, "up": spec.up, "down": spec.down}[which]
    w = getattr(module, name).weight
    if which == "down":
        return w if spec.conv1d else w.T
    if spec.conv1d:
        w = w.T
    if spec.fused:
        half = w.shape[0] // 2
        w = w[:half] if which == "gate" else w[half:]
    return w


def d_ff(model: nn.Module) -> int:
    return neuron_weight(model, 0, "up").shape[0]


def d_model(model: nn.Module) -> int:
    return neuron_weight(model, 0, "up").shape[1]


def activations_from_inputs(model: nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """Recompute a(x) = up(x) * act(gate(x)) (or act(c_fc(x)) for GPT-2) from MLP inputs x.

    x: [..., d_model] -> [..., d_ff]; uses the model's own modules (biases included).
    """
    spec = get_arch(model)
    module = mlp(model, layer)
    act = getattr(module, spec.act)
    if spec.gate is None:
        return act(getattr(module, spec.up)(x))
    if spec.fused:
        gate, up = getattr(module, spec.up)(x).chunk(2, dim=-1)
    else:
        gate, up = getattr(module, spec.gate)(x), getattr(module, spec.up)(x)
    return up * act(gate)
