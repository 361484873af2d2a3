"""The trunk below an edit, recorded once and replayed: an edit at layer L leaves layers 0..L-1
as they were.

Scoring a candidate edit at layer L by validation margins (Algorithm 1's layer choice) runs
every validation prompt through the L layers below the edit, which the edit cannot change.
`Trunk(model, layer)` records, on a pass without the edit (or with one at `layer` or above),
the input of decoder layer `layer` in every forward call, in order. A later pass that makes
the same calls (the same prompts in the same batches: a deterministic margin function called
again) replays them: the layers below `layer` are skipped, and `layer` reads the recorded
input, so the logits are those of the full pass. A skipped layer still appends a one-wide
placeholder of its tokens' length to the key/value cache where there is one, so that the
cache length the model reads from its first layer (the causal mask, the positions of later
tokens) stays right; nothing reads the placeholders, since their layers never run. A call of
another shape, or a different number of calls, raises.

`reuse()` records on its first use and replays on every later one, the pattern of its callers
(an unedited pass, then one per candidate; or the first of several draws at one layer). At
layer 0 there is nothing below to skip: nothing is recorded and every pass runs in full.

The recorded inputs are all the pass's hidden states at one layer (prompts x tokens x d_model,
float32), so a recording that passes `max_bytes` is dropped and replay then runs the full
passes: memory stays bounded however many prompts are scored.

Issue 17: the best preset scores seven candidate layers, 16 to 22 of Qwen2.5-Coder-0.5B's 24,
so each candidate's pass runs 8 of the 24 layers after one recorded pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from mlsafe import arch


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _skipped(layer_idx: int):
    """The forward of a skipped decoder layer: its input back, a placeholder in the cache."""
    def forward(hidden_states, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and kwargs.get("use_cache", True):
            b, t = hidden_states.shape[:2]
            slot = hidden_states.new_zeros(b, 1, t, 1)
            cache.update(slot, slot, layer_idx)
        return hidden_states
    return forward


#: The most bytes a recording keeps (module docstring).
MAX_BYTES = 2**30


class Trunk:
    """The inputs of decoder layer `layer`, one per forward call of a recorded pass (None once a
    recording passed `max_bytes`, or at layer 0: replay then runs full passes)."""

    def __init__(self, model, layer: int, max_bytes: int = MAX_BYTES):
        n = arch.n_layers(model)
        if not 0 <= layer < n:
            raise ValueError(f"trunk layer {layer} is out of range: this model has layers 0..{n - 1}")
        self.model, self.layer, self.max_bytes = model, layer, max_bytes
        self.saved: list[torch.Tensor] | None = []
        self.recorded = False

    def reuse(self):
        """`record()` the first time, `replay()` after (module docstring)."""
        return self.replay() if self.recorded else self.record()

    @contextmanager
    def record(self) -> Iterator["Trunk"]:
        """Keep the input of `layer` of every forward call inside (replacing what was kept)."""
        self.recorded = True
        if self.layer == 0:   # nothing below to skip
            self.saved = None
            yield self
            return
        self.saved = []
        held = {"bytes": 0}

        def keep(module, args, kwargs):
            if self.saved is None:
                return
            h = _hidden(args, kwargs)
            held["bytes"] += h.numel() * h.element_size()
            if held["bytes"] > self.max_bytes:
                self.saved = None   # too large to keep: replay will run full passes
                return
            self.saved.append(h.detach().clone())
        handle = arch.blocks(self.model)[self.layer].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    @contextmanager
    def replay(self) -> Iterator["Trunk"]:
        """Forward calls inside skip the layers below `layer` and feed it the recorded inputs,
        call by call (module docstring); full passes where the recording was dropped."""
        if self.saved is None:
            yield self
            return
        blocks = arch.blocks(self.model)
        calls = {"n": 0}

        def feed(module, args, kwargs):
            k = calls["n"]
            if k >= len(self.saved):
                raise RuntimeError(f"trunk replay: forward call {k + 1}, but {len(self.saved)} were recorded")
            got, saved = _hidden(args, kwargs), self.saved[k]
            if got.shape != saved.shape:
                raise RuntimeError(f"trunk replay: forward call {k + 1} has hidden states {tuple(got.shape)}, "
                                   f"the recorded one {tuple(saved.shape)}: replay the same prompts in the same batches")
            calls["n"] = k + 1
            return ((saved, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": saved})
        handle = blocks[self.layer].register_forward_pre_hook(feed, with_kwargs=True)
        for i, block in enumerate(blocks[:self.layer]):
            block.forward = _skipped(i)
        try:
            yield self
            if calls["n"] != len(self.saved):
                raise RuntimeError(f"trunk replay: {calls['n']} forward calls, {len(self.saved)} were recorded")
        finally:
            handle.remove()
            for block in blocks[:self.layer]:
                vars(block).pop("forward", None)
