"""mlsafe.presets and the results folder a preset run writes to."""

import pytest

from mlsafe import presets, transfer
from mlsafe.pipeline import run_key
from tiny import tiny_model


def test_presets_resolve_to_valid_edit_configs():
    model = tiny_model("qwen2")            # 2 layers
    assert presets.resolve("paper", model) == {}
    best = presets.resolve("best", model)
    assert best["neuron_set"] == "gap" and best["layer_selection"] == "margins"
    assert best["neuron_k"] == 48 // 2          # half the tiny layer (d_ff 48): a disjoint control fits
    assert set(best["candidate_layers"]) <= {0, 1}
    cfg = transfer.EditConfig(targets=["th"], **best)   # accepted as it stands
    assert cfg.neuron_set == "gap" and cfg.stats_pass == "fused"
    with pytest.raises(ValueError, match="unknown preset"):
        presets.resolve("fast", model)


def test_best_candidates_are_the_last_third_without_the_final_layer(monkeypatch):
    monkeypatch.setattr("mlsafe.arch.n_layers", lambda model: 24)   # only the shapes matter
    monkeypatch.setattr("mlsafe.arch.d_ff", lambda model: 4864)
    best = presets.resolve("best", object())
    assert best["candidate_layers"] == list(range(16, 23)) and best["neuron_k"] == 1024


def test_run_key_keeps_preset_runs_apart():
    assert run_key(["th"]) == "th"
    assert run_key(["ja"], "best") == "ja-best"
    with pytest.raises(ValueError, match="unknown preset"):
        run_key(["th"], "nope")


def test_a_preset_name_is_registered_once():
    with pytest.raises(ValueError, match="preset 'paper' is already registered"):
        presets.register_preset("paper")(lambda model: {})
    assert presets.resolve("paper", None) == {}


def test_best_kl_is_best_with_a_heavier_preservation_weight():
    model = tiny_model("qwen2")
    best, kl = presets.resolve("best", model), presets.resolve("best-kl", model)
    assert kl.pop("gamma") == 50.0 and kl == best
    assert transfer.EditConfig(targets=["th"], **presets.resolve("best-kl", model)).gamma == 50.0
    assert run_key(["ja"], "best-kl") == "ja-best-kl"
