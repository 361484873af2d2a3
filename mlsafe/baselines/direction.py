"""Refusal-direction baselines (Arditi et al. 2024, arXiv 2406.11717), transferred from English.

    r_l = mean(h_l | harmful en) - mean(h_l | harmless en)

h_l is the residual stream after decoder layer l (the layer's output) at the last prompt
token (chat template applied). Two ways to use r, both training-free:

* ActAdd (`actadd`): add alpha * r_l to the output of layer l at every position, during the
  whole generation. To *add* safety it is applied on target-language prompts
  ("actadd_target": the deployment knows the prompt's language but not whether it is
  harmful, so harmless target-language prompts get it too) or on every prompt
  ("actadd_all"). Layer and alpha are chosen on the validation anchors with the score the
  edit uses (`mlsafe.transfer`): margin gain on target harmful prompts minus any margin gain
  on harmless prompts minus any margin loss on English harmful prompts.
* Weight orthogonalisation (`orthogonalised`): Arditi et al.'s weight edit, which projects
  r_hat = r / |r| out of every matrix that writes to the residual stream (token
  embeddings unless tied to the head, attention output projections, MLP down
  projections), W_out <- (I - r_hat r_hat^T) W_out. It REMOVES refusal (their jailbreak);
  here it is the causal check that r is the refusal direction: ASR should rise in every
  language, English included. It is not a safety method.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from mlsafe import arch, probe, transfer
import mlsafe.baselines.cost as cost
from mlsafe.prompts import Prompt

_F64 = torch.float64
ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0)


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def residuals(model: nn.Module, tokenizer, prompts: Sequence[Prompt], layers: Sequence[int], *,
              batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Residual stream after each decoder layer in `layers` at the last prompt token:
    {layer: float64 [N, d_model]} (chat template applied, left padding)."""
    if not prompts:
        raise ValueError("residuals needs at least one prompt")
    blocks = arch.blocks(model)
    layers = sorted(set(int(x) for x in layers))
    if any(not 0 <= x < len(blocks) for x in layers):
        raise ValueError(f"layers must lie in [0, {len(blocks)}), got {layers}")
    texts = transfer.chat_texts(tokenizer, prompts)
    out: dict[int, list[torch.Tensor]] = {x: [] for x in layers}
    store: dict[int, torch.Tensor] = {}
    handles = [blocks[x].register_forward_hook(
        lambda mod, args, output, x=x: store.__setitem__(x, _hidden(output)[:, -1].detach().to(_F64).cpu()))
        for x in layers]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for start in range(0, len(texts), batch_size):
            enc = probe.encode_batch(tokenizer, texts[start:start + batch_size], device)
            model(**enc, use_cache=False)
            for x in layers:
                out[x].append(store[x])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {x: torch.cat(v) for x, v in out.items()}


def refusal_directions(model: nn.Module, tokenizer, harmful: Sequence[Prompt], harmless: Sequence[Prompt],
                       layers: Sequence[int], *, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """r_l = mean(h_l | harmful) - mean(h_l | harmless) per layer, float64 [d_model]."""
    h = residuals(model, tokenizer, harmful, layers, batch_size=batch_size)
    s = residuals(model, tokenizer, harmless, layers, batch_size=batch_size)
    return {x: h[x].mean(0) - s[x].mean(0) for x in h}


@contextmanager
def actadd(model: nn.Module, layer: int, vector: torch.Tensor):
    """Add `vector` [d_model] to the output of decoder layer `layer` at every position
    (ActAdd); the hook is removed on exit, also on error."""
    blocks = arch.blocks(model)
    if not isinstance(layer, int) or not 0 <= layer < len(blocks):
        raise ValueError(f"layer must be an int in [0, {len(blocks)}), got {layer!r}")
    block = blocks[layer]
    d = arch.d_model(model)
    vec = torch.as_tensor(vector)
    if vec.shape != (d,) or not bool(torch.isfinite(vec).all()):
        raise ValueError(f"vector must be a finite [d_model] = [{d}] tensor, got shape {tuple(vec.shape)}")

    def hook(module, args, output):
        h = _hidden(output)
        h = h + vec.to(device=h.device, dtype=h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = block.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def residual_writers(model: nn.Module) -> list[tuple[torch.Tensor, str]]:
    """(parameter, layout) of every matrix writing to the residual stream; layout "rows" means
    each row is a d_model vector written ([*, d_model]), "cols" means W [d_model, *]."""
    spec = arch.get_arch(model)
    if spec.conv1d or spec.gate is None:
        raise ValueError(f"weight orthogonalisation is implemented for gated Llama-style models, "
                         f"not {spec.model_type}; use ActAdd instead")
    out = []
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight is not emb:
        out.append((emb, "rows"))
    for layer, block in enumerate(arch.blocks(model)):
        o_proj = getattr(getattr(block, "self_attn", None), "o_proj", None)
        if o_proj is None:
            raise ValueError(f"layer {layer} has no self_attn.o_proj; weight orthogonalisation "
                             "needs Llama-style attention")
        out.append((o_proj.weight, "cols"))
        out.append((arch.neuron_weight(model, layer, "down"), "rows"))
    return out


@contextmanager
def orthogonalised(model: nn.Module, direction: torch.Tensor):
    """Project r_hat out of every residual-stream writer (module docstring); restored exactly on exit."""
    r = torch.as_tensor(direction).to(_F64)
    if r.shape != (arch.d_model(model),) or not float(r.norm()) > 0:
        raise ValueError(f"direction must be a non-zero [d_model] = [{arch.d_model(model)}] tensor")
    r = r / r.norm()
    saved = []
    try:
        with torch.no_grad():
            for w, layout in residual_writers(model):
                saved.append((w, w.clone()))
                w64, rr = w.to(_F64), r.to(w.device)
                new = w64 - torch.outer(w64 @ rr, rr) if layout == "rows" else w64 - torch.outer(rr, rr @ w64)
                w.copy_(new.to(w.dtype))
        yield model
    finally:
        with torch.no_grad():
            for w, original in reversed(saved):
                w.copy_(original)


@dataclass
class DirectionFit:
    """The chosen layer and scale; `vector` = alpha * r_layer; `candidates` one row per (layer, alpha)."""

    layer: int
    alpha: float
    direction: torch.Tensor
    candidates: list[dict] = field(default_factory=list)
    forward_tokens: int = 0     # tokens run through the model to fit r and score the grid

    @property
    def vector(self) -> torch.Tensor:
        return self.alpha * self.direction


def fit_direction(model: nn.Module, tokenizer, anchors: transfer.Anchors, targets: Sequence[str],
                  margin: transfer.MarginFn, *, source: str = "en", layers: Sequence[int] | None = None,
                  alphas: Sequence[float] = ALPHAS, batch_size: int = 16) -> DirectionFit:
    """English r at each candidate layer, then (layer, alpha) by the validation score (module doc)."""
    layers = list(layers if layers is not None else transfer.default_candidates(model))
    if not layers or not alphas:
        raise ValueError("fit_direction needs at least one candidate layer and one alpha")
    harm = [p for p in anchors.fit_harmful if p.lang == source]
    safe = [p for p in anchors.fit_harmless if p.lang == source]
    val_h = [p for p in anchors.val_harmful if p.lang in targets]
    val_s = [p for p in anchors.val_harmless if p.lang in targets or p.lang == source]
    val_src = [p for p in anchors.val_harmful if p.lang == source]
    if not (harm and safe and val_h and val_s and val_src):
        raise ValueError("fit_direction needs English fit anchors (harmful and harmless) and validation "
                         "anchors in the targets and English; use val_fraction > 0")
    dirs = refusal_directions(model, tokenizer, harm, safe, layers, batch_size=batch_size)
    groups = (val_h, val_s, val_src)
    before = [margin(model, g).mean().item() for g in groups]
    best, rows = None, []
    for layer in layers:
        for alpha in alphas:
            with actadd(model, layer, float(alpha) * dirs[layer]):
                after = [margin(model, g).mean().item() for g in groups]
            gh, gs, gsrc = (a - b for a, b in zip(after, before))
            row = {"layer": layer, "alpha": float(alpha), "val_gain_harmful": gh, "val_gain_harmless": gs,
                   "val_gain_source": gsrc, "score": gh - max(gs, 0.0) - max(-gsrc, 0.0)}
            rows.append(row)
            if best is None or row["score"] > best["score"]:
                best = row
    count = lambda ps: cost.count_tokens(tokenizer, transfer.chat_texts(tokenizer, ps))  # noqa: E731
    tokens = count(harm) + count(safe) + (1 + len(layers) * len(alphas)) * sum(count(g) for g in groups)
    return DirectionFit(best["layer"], best["alpha"], dirs[best["layer"]], rows, tokens)
