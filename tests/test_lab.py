"""mlsafe.lab: ranking and sparsity subsets, per-cell re-solves from the fit's statistics,
the grid and lab_grid.json (tiny random model with fixture data)."""

from __future__ import annotations

import json

import pytest
import torch

from mlsafe import arch, lab, neurons, transfer
from mlsafe.suites import edit_config


def _sets(d, z):
    d, z = torch.tensor(d, dtype=torch.float64), torch.tensor(z, dtype=torch.float64)
    s = torch.nonzero(d > 1.0).flatten()
    return neurons.NeuronSets(d, z, d, torch.empty(0, dtype=torch.long), s, s, 2.0, 1.0)


def test_ranking_and_subsets():
    sets = _sets([5.0, 0.1, float("inf"), 2.0, 2.0, 3.0], [0.0, 0.0, 1.0, 0.5, 0.9, 3.0])
    assert lab.ranked(sets, "d").tolist() == [2, 0, 5, 4, 3]      # inf first; tie 3/4 broken by z
    assert lab.ranked(sets, "z").tolist() == [5, 2, 4, 3, 0]
    assert lab.subset(sets, 0.25).tolist() == [0, 2]              # ceil(0.25 * 5) = 2, sorted
    assert lab.subset(sets, 0.01).tolist() == [2]                 # at least one neuron
    assert lab.subset(sets, 1.0).tolist() == sets.s_safety.tolist()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            lab.subset(sets, bad)
    with pytest.raises(ValueError, match="by must be"):
        lab.ranked(sets, "probe")
    with pytest.raises(ValueError, match="empty"):
        lab.subset(_sets([0.0, 0.5], [0.0, 0.0]), 0.5)


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory, tiny_loaded):
    root = tmp_path_factory.mktemp("lab")
    folder, lm, suite = tiny_loaded   # conftest.py: the session's tiny Qwen2 and its fixture suite
    cfg = edit_config(["th"], 0, suite, layer=1)
    return root, folder, lm, suite, cfg, lab.Lab.from_model(lm.model, lm.tokenizer, suite, cfg, max_eval_per_lang=3)


def test_full_set_at_the_main_rank_is_the_main_edit(tiny_lab):
    _, _, lm, suite, cfg, the_lab = tiny_lab
    main_edit, _ = transfer.fit(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, cfg)
    edit = the_lab.edit(cfg.rank, 1.0)
    assert torch.equal(edit.neurons, main_edit.neurons)
    for module in cfg.modules:
        assert torch.allclose(edit.delta(module), main_edit.delta(module), atol=1e-6)


def test_cell_clips_rank_restores_weights_and_reports(tiny_lab):
    _, _, lm, _, _, the_lab = tiny_lab
    before = arch.neuron_weight(lm.model, 1, "gate").clone()
    cell = the_lab.cell(rank=1000, sparsity=0.1)
    assert torch.equal(arch.neuron_weight(lm.model, 1, "gate"), before)
    m = the_lab.safety_set.s_safety.numel()
    assert cell["n_neurons"] == max(1, -(-m // 10)) and cell["effective_rank"] == cell["n_neurons"]
    assert 0.0 <= cell["asr_target"] <= 1.0 and 0.0 <= cell["asr_en"] <= 1.0
    assert set(cell["asr"]) == {"en", "th"} and len(the_lab.harmful) == 6
    assert the_lab.edit(2, 1.0).factors["gate"][1].shape[0] == 2


def test_lab_needs_an_explicit_layer(tiny_lab):
    _, _, lm, suite, cfg, _ = tiny_lab
    auto = edit_config(["th"], 0, suite)
    with pytest.raises(ValueError, match="explicitly"):
        lab.Lab.from_model(lm.model, lm.tokenizer, suite, auto)


def test_grid_and_precompute_write_lab_grid_json(tiny_lab):
    root, folder, _, _, _, the_lab = tiny_lab
    data = lab.grid(the_lab, ranks=(1, 2, 2, 10_000), sparsities=(0.5, 1.0))
    m = the_lab.safety_set.s_safety.numel()
    assert data["ranks"] == [1, 2, m] and len(data["cells"]) == 6
    assert [(c["rank"], c["sparsity"]) for c in data["cells"][:2]] == [(1, 0.5), (1, 1.0)]
    frame = lab.grid_frame(data)
    assert list(frame["rank"]) == [1, 1, 2, 2, m, m]
    out = root / "res"
    with pytest.raises(FileNotFoundError, match="mlsafe reproduce"):
        lab.precompute(str(folder), "th", out_dir=out)
    path = lab.precompute(str(folder), "th", ranks=(1,), sparsities=(1.0,), layer=1, max_eval_per_lang=2,
                          out_dir=out)
    saved = json.loads(path.read_text())
    assert path.name == "lab_grid.json" and saved["layer"] == 1 and len(saved["cells"]) == 1
    assert saved["baseline"]["asr"].keys() == {"en", "th"}


def test_open_lab_takes_the_main_runs_overrides(tiny_lab):
    _, folder, _, _, _, _ = tiny_lab
    opened = lab.open_lab(str(folder), "th", layer=1, config={"gamma": 0.5, "layer": 0}, max_eval_per_lang=1)
    assert opened.cfg.gamma == 0.5 and opened.layer == 1 and len(opened.harmful) == 2
