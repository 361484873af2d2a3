"""Ablations of the edit (mlsafe.ablations) on a tiny random Llama."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mlsafe import ablations
from mlsafe.edit import fingerprint
from test_baselines import _prompts, tiny_setup


def test_clip_rank_caps_at_what_the_layer_allows():
    assert ablations.clip_rank(8, 128, 40) == (8, "")
    eff, note = ablations.clip_rank(512, 128, 40)
    assert eff == 40 and "clipped to 40" in note and "|S|=40" in note
    assert ablations.clip_rank(64, 32, 100)[0] == 32
    with pytest.raises(ValueError, match="rank"):
        ablations.clip_rank(0, 8, 8)


def test_subsample_keeps_whole_groups_and_is_seeded():
    prompts = _prompts("harmful", 0, 8)
    sub = ablations.subsample(prompts, 0.25, seed=1)
    groups = {p.parallel_id for p in sub}
    assert len(groups) == 2 and len(sub) == 2 * 3          # every translation of a kept request
    assert sub == ablations.subsample(prompts, 0.25, seed=1)
    assert len({p.parallel_id for p in ablations.subsample(prompts, 0.01, seed=1)}) == 1
    with pytest.raises(ValueError, match="fraction"):
        ablations.subsample(prompts, 0.0, seed=1)


def test_run_ablations_covers_the_requested_values(tmp_path):
    torch.manual_seed(0)
    lm, suite = tiny_setup()
    fp = fingerprint(lm.model)
    ranks = (2, 8, 512)
    taus = ((1.0, 0.5), (50.0, 50.0))
    df = ablations.run_ablations(lm, suite, "th", 0, tmp_path, ranks=ranks, taus=taus, fractions=(0.5, 1.0),
                                 max_layers=2)
    assert fingerprint(lm.model) == fp                      # every edit (also multi-layer) reverted
    assert list(df.columns) == list(ablations.COLUMNS)
    got = {a: list(dict.fromkeys(g.value)) for a, g in df.groupby("ablation", sort=False)}
    assert got["rank"] == list(ranks)
    assert got["anchor_terms"] == ["both", "gamma_only", "lambda_only"]
    assert got["tau"] == ["1/0.5", "50/50"]
    assert got["layer"] == [0, 1, 2]
    assert got["multi_layer"] == [1, 2]
    assert len(got["n_anchors"]) == 2 and got["n_anchors"][0] < got["n_anchors"][1]
    rank = df[(df.ablation == "rank") & (df.lang == "th")].set_index("value")
    top = int(rank.loc[512, "n_neurons"])                   # |S| < d_model = 64 here
    assert rank.loc[512, "rank"] == min(top, 64) and "clipped" in rank.loc[512, "note"]
    assert rank.loc[8, "rank"] == 8 and rank.loc[8, "note"] == ""
    empty = df[(df.ablation == "tau") & (df.value == "50/50")]
    assert (empty.n_neurons == 0).all() and empty.asr.isna().all()   # no neuron passes: no edit, said so
    lam = df[(df.ablation == "anchor_terms") & (df.lang == "th")].set_index("value").note
    assert lam["lambda_only"].startswith("gamma=0,")
    multi = df[(df.ablation == "multi_layer") & (df.lang == "th")].set_index("value")
    assert multi.loc[2, "n_neurons"] > multi.loc[1, "n_neurons"]
    assert len(pd.read_csv(tmp_path / "ablations.csv")) == len(df)
    with pytest.raises(ValueError, match="unknown ablations"):
        ablations.run_ablations(lm, suite, "th", ablations=["rank", "nope"])


def test_every_paper_ablation_row_maps_to_one_of_ours():
    from mlsafe import paper

    assert set(ablations.PAPER_ROWS) == set(paper.ABLATIONS)
    kinds = {kind for kind, _ in ablations.PAPER_ROWS.values()}
    assert kinds <= {"anchor_terms", "baseline"}
