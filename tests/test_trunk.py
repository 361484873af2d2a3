"""The recorded trunk (mlsafe.trunk, issue 17): a replayed pass skips the layers below the
edit and gives the logits of the full pass, with and without the shared-prefix cache."""

from __future__ import annotations

import pytest
import torch

from mlsafe import arch
from mlsafe.evaluate.margin import next_token_logprobs
from mlsafe.trunk import Trunk

from test_prefix import TEXTS


def _bump_mlp(model, layer: int):
    """An edit stand-in: seeded noise on the down projection of `layer` (not a scaling, which
    Gemma's post-MLP norm would undo); returns the undo."""
    w = arch.blocks(model)[layer].mlp.down_proj.weight
    old = w.detach().clone()
    with torch.no_grad():
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * w.std())
    return lambda: w.data.copy_(old)


@pytest.mark.parametrize("share", [True, False])
def test_replay_gives_the_full_pass(fast_path_models, share):
    ids = list(range(40))
    for name, model, tok in fast_path_models:
        layer = arch.n_layers(model) - 1
        trunk = Trunk(model, layer)
        with trunk.record():
            before = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2, share_prefix=share)
        assert len(trunk.saved) == (4 if share else 3)   # the prefix pass and three batches
        undo = _bump_mlp(model, layer)
        try:
            full = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2, share_prefix=share)
            calls = []
            lower = arch.blocks(model)[0]
            handle = lower.mlp.register_forward_hook(lambda *a: calls.append(1))
            with trunk.replay():
                replayed = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2, share_prefix=share)
            handle.remove()
        finally:
            undo()
        assert not calls, name                                       # the layer below never ran
        assert not torch.allclose(full, before, atol=1e-3), name     # the edit moves the logits
        assert torch.allclose(replayed, full, atol=1e-6), name
        assert "forward" not in vars(lower)                          # restored


def test_replay_refuses_other_calls(fast_path_models):
    name, model, tok = fast_path_models[0]
    ids = list(range(10))
    trunk = Trunk(model, 1)
    with trunk.record():
        next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
    with pytest.raises(RuntimeError, match="same prompts in the same batches"), trunk.replay():
        next_token_logprobs(model, tok, [t + " and some more words" for t in TEXTS], ids, batch_size=2)
    with pytest.raises(RuntimeError, match="were recorded"), trunk.replay():   # one pass too many
        next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
        next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
    assert "forward" not in vars(arch.blocks(model)[0])
    with pytest.raises(ValueError, match="out of range"):
        Trunk(model, 99)


def test_a_recording_over_its_budget_replays_full_passes(fast_path_models):
    name, model, tok = fast_path_models[0]
    ids = list(range(10))
    trunk = Trunk(model, 1, max_bytes=64)
    with trunk.record():
        before = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
    assert trunk.saved is None
    calls = []
    handle = arch.blocks(model)[0].mlp.register_forward_hook(lambda *a: calls.append(1))
    with trunk.replay():
        again = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
    handle.remove()
    assert calls and torch.equal(again, before)   # the lower layer ran: a full pass


def test_reuse_records_once_and_layer_zero_runs_full_passes(fast_path_models):
    name, model, tok = fast_path_models[0]
    ids = list(range(10))
    trunk = Trunk(model, 1)
    with trunk.reuse():
        first = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
    assert trunk.recorded and trunk.saved
    calls = []
    handle = arch.blocks(model)[0].mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        with trunk.reuse():    # a replay: the lower layer does not run
            again = next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
        assert not calls and torch.allclose(again, first, atol=1e-6)
        bottom = Trunk(model, 0)
        with bottom.record():
            next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
        assert bottom.saved is None
        with bottom.reuse():   # nothing recorded: a full pass
            next_token_logprobs(model, tok, TEXTS, ids, batch_size=2)
        assert calls
    finally:
        handle.remove()
