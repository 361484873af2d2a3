"""How much of the refusal decision one layer can carry: activation patching at the decision position.

For a target-language harmful prompt and its English parallel, the refusal margin (see
:mod:`mlsafe.evaluate.margin`) is read at the generation position, the last prompt token.
Patching replaces, at that position and at one layer, part of the target prompt's forward
pass with the English prompt's values:

- ``"neurons"``: the activations a_S(x) of a neuron set S (the input of the MLP's down
  projection, restricted to S). Any edit of S's gate/up rows at that layer (eq. 4's dW)
  changes the model only through a_S, so this patch bounds what the paper's edit could do
  there if it reproduced English's a_S exactly at the decision position.
- ``"mlp"``: the whole MLP output of the layer (every neuron, through W_down).
- ``"residual"``: the residual stream after the layer (everything computed so far).

The margin gain of a patch is its margin minus the unpatched target margin; the share of
the gap is gain / (English margin - target margin). Patched forward passes re-use the
target prompts' key/value cache of every earlier position (a patch at the last position
cannot change them under causal attention), so each (layer, site) costs one single-token
forward per batch.

Tensors in, tensors out: token id lists and token-id sets, no data sets, no chat formatting.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from transformers import DynamicCache

from mlsafe import arch, chat
from mlsafe.evaluate.margin import margin_from_logprobs

SITES = ("neurons", "mlp", "residual")


def _hooked_module(model, layer: int, site: str):
    if site == "neurons":
        return arch.down_module(model, layer)
    if site == "mlp":
        return arch.mlp(model, layer)
    if site == "residual":
        return arch.blocks(model)[layer]
    raise ValueError(f"site must be one of {SITES}, got {site!r}")


def _main(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def recording(model, layers: Sequence[int], neuron_sets: Mapping[int, torch.Tensor] | None = None
              ) -> Iterator[dict]:
    """Record, for every layer and site, the values at the last position of each forward pass:
    yields a dict (layer, site) -> [batch, dim] (float32, on CPU; the last forward's values).
    "neurons" is recorded only for layers in `neuron_sets` (their S's columns). Hooks are
    always removed on exit."""
    store: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def keep(key, x):
        store[key] = x[:, -1, :].detach().float().cpu()

    try:
        for layer in layers:
            if neuron_sets is not None and layer in neuron_sets:
                idx = neuron_sets[layer]
                handles.append(_hooked_module(model, layer, "neurons").register_forward_pre_hook(
                    lambda m, args, key=(layer, "neurons"), idx=idx: keep(key, args[0][..., idx.to(args[0].device)])))
            for site in ("mlp", "residual"):
                handles.append(_hooked_module(model, layer, site).register_forward_hook(
                    lambda m, args, out, key=(layer, site): keep(key, _main(out))))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patched(model, layer: int, site: str, values: torch.Tensor, idx: torch.Tensor | None = None) -> Iterator[None]:
    """Replace the last position's `site` values at `layer` by `values` [batch, dim] in every
    forward pass inside the block ("neurons": only the columns `idx`). Hooks always removed."""
    module = _hooked_module(model, layer, site)
    if site == "neurons":
        if idx is None:
            raise ValueError("site 'neurons' needs the neuron set idx")

        def pre(m, args):
            x = args[0].clone()
            x[:, -1, idx.to(x.device)] = values.to(x.device, x.dtype)
            return (x, *args[1:])
        handle = module.register_forward_pre_hook(pre)
    else:
        def post(m, args, out):
            h = _main(out).clone()
            h[:, -1, :] = values.to(h.device, h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def margins_from_logits(logits: torch.Tensor, refusal_ids: Sequence[int], comply_ids: Sequence[int]) -> torch.Tensor:
    """logsumexp of refusal-token log-probs minus that of compliance tokens, float64 [batch]."""
    logp = torch.log_softmax(logits.double(), dim=-1)[:, [*refusal_ids, *comply_ids]]
    return margin_from_logprobs(logp, len(refusal_ids)).cpu()


def _inputs(ids: Sequence[Sequence[int]], pad_id: int, device) -> dict:
    enc = {k: v.to(device) for k, v in chat.left_pad(ids, pad_id).items()}
    enc["position_ids"] = (enc["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return enc


@torch.no_grad()
def patching_ceiling(model, target_ids: Sequence[Sequence[int]], source_ids: Sequence[Sequence[int]],
                     layers: Sequence[int], refusal_ids: Sequence[int], comply_ids: Sequence[int], *,
                     neuron_sets: Mapping[int, torch.Tensor] | None = None, sites: Sequence[str] = SITES,
                     pad_id: int = 0, batch_size: int = 16) -> dict:
    """Per-prompt margins of the target prompts unpatched, of their sources, and patched at
    every (layer, site): {"target": [N], "source": [N], "patched": {(layer, site): [N]}}
    (float64 tensors). Row i of target_ids is patched with row i of source_ids. Prompts must
    end in the same token (the chat template's generation prompt does)."""
    if len(target_ids) != len(source_ids):
        raise ValueError(f"{len(target_ids)} target prompts but {len(source_ids)} sources: pass parallel rows")
    if "neurons" in sites and not neuron_sets:
        raise ValueError("site 'neurons' needs neuron_sets {layer: indices}")
    for t, s in zip(target_ids, source_ids):
        if not t or not s or t[-1] != s[-1] or len(t) < 2:
            raise ValueError("each target and source prompt needs >= 2 tokens and the same last token")
    device = next(model.parameters()).device
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = {"target": [], "source": [], "patched": {}}
    keys = [(layer, site) for layer in layers for site in sites
            if site != "neurons" or layer in neuron_sets]
    for start in range(0, len(target_ids), batch_size):
        tgt = _inputs(target_ids[start:start + batch_size], pad_id, device)
        src = _inputs(source_ids[start:start + batch_size], pad_id, device)
        with recording(model, layers, neuron_sets if "neurons" in sites else None) as rec:
            out["source"].append(margins_from_logits(model(**src).logits[:, -1], refusal_ids, comply_ids))
        english = dict(rec)
        n = tgt["input_ids"].shape[1]
        cache = DynamicCache(config=model.config)
        model(input_ids=tgt["input_ids"][:, :-1], attention_mask=tgt["attention_mask"][:, :-1],
              position_ids=tgt["position_ids"][:, :-1], use_cache=True, **{cache_kw: cache})

        def last(cache=cache):
            logits = model(input_ids=tgt["input_ids"][:, -1:], attention_mask=tgt["attention_mask"],
                           position_ids=tgt["position_ids"][:, -1:], use_cache=True,
                           **{cache_kw: cache}).logits[:, -1]
            cache.crop(-1)                               # drop the last token: back to the prefix
            return margins_from_logits(logits, refusal_ids, comply_ids)

        out["target"].append(last())
        for layer, site in keys:
            idx = neuron_sets[layer] if site == "neurons" else None
            with patched(model, layer, site, english[(layer, site)], idx):
                out["patched"].setdefault((layer, site), []).append(last())
    return {"target": torch.cat(out["target"]), "source": torch.cat(out["source"]),
            "patched": {k: torch.cat(v) for k, v in out["patched"].items()}}


def summarize(result: dict) -> list[dict]:
    """One row per (layer, site): mean margin gain, share of the mean gap it closes, and the
    fraction of prompts whose margin is positive (leans to refusing) after the patch."""
    base, src = result["target"], result["source"]
    gap = float((src - base).mean())
    rows = []
    for (layer, site), m in sorted(result["patched"].items()):
        gain = float((m - base).mean())
        rows.append({"layer": layer, "site": site, "margin_gain": gain,
                     "share_of_gap": gain / gap if gap > 0 else float("nan"),
                     "positive_after": float((m > 0).double().mean()),
                     "positive_before": float((base > 0).double().mean())})
    return rows
