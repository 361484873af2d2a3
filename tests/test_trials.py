"""Validation trials (mlsafe.trials) on the tiny random Qwen2 model and its fixture suite."""

from __future__ import annotations

import json

import pytest
import torch

from mlsafe import arch, trials, transfer
from mlsafe.edit import SparseEdit, fingerprint
from mlsafe.suites import margin_fn

LAYER = 1


def _edit(model, layer: int, *, scale: float, seed: int = 0) -> SparseEdit:
    """A rank-2 edit of 8 neurons' gate and up rows: random factors times `scale` (0: identity)."""
    g = torch.Generator().manual_seed(seed)
    d_in = arch.d_model(model)
    factors = {m: (scale * torch.randn(d_in, 2, generator=g), torch.randn(2, 8, generator=g))
               for m in ("gate", "up")}
    return SparseEdit(layer=layer, modules=("gate", "up"), neurons=torch.arange(8) * 3, factors=factors,
                      hparams={"rank": 2}, base_fingerprint=fingerprint(model, layer),
                      model_type=arch.get_arch(model).model_type)


@pytest.fixture(scope="module")
def setup(tiny_loaded):
    _, lm, suite = tiny_loaded
    cfg = transfer.EditConfig(targets=["zh", "ja", "th"], seed=0)
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    margin = margin_fn(suite, lm.tokenizer)
    before = transfer.validation_margins(lm.model, anchors, cfg, margin)
    return lm, cfg, anchors, margin, before


def _trial(setup, edits, **kw):
    lm, cfg, anchors, margin, before = setup
    return trials.validation_trial(lm.model, lm.tokenizer, anchors, cfg, margin, before, edits, **kw)


def test_identity_edit_gives_zero_gain_and_zero_kl(setup):
    lm, _, _, _, before = setup
    row = _trial(setup, [_edit(lm.model, LAYER, scale=0.0)], gap=2.0)
    assert row["val_gain_harmful"] == row["val_gain_harmless"] == row["val_gain_source"] == 0.0
    assert row["score"] == row["share_of_gap"] == 0.0
    assert row["after"] == dict(zip(trials.GROUPS, before))
    assert row["first_token_kl_mean"] == 0.0 and set(row["first_token_kl"].values()) == {0.0}


def test_row_keys_follow_the_options(setup):
    lm = setup[0]
    edit = _edit(lm.model, LAYER, scale=0.5)
    full = _trial(setup, [edit], gap=1.5, step="x", layer=LAYER)
    assert list(full) == ["step", "layer", "val_gain_harmful", "val_gain_harmless", "val_gain_source", "score",
                          "share_of_gap", "after", "first_token_kl", "first_token_kl_mean", "n_neurons",
                          "fraction_of_parameters", "seconds"]
    assert full["share_of_gap"] == pytest.approx(full["val_gain_harmful"] / 1.5)
    assert full["n_neurons"] == 8 and full["fraction_of_parameters"] == edit.fraction_of_parameters(lm.model)
    bare = _trial(setup, [edit], kl=None, after=False)
    assert list(bare) == ["val_gain_harmful", "val_gain_harmless", "val_gain_source", "score", "n_neurons",
                          "fraction_of_parameters", "seconds"]
    by_lang = _trial(setup, [edit], kl="by_lang", after=False)
    assert "first_token_kl" in by_lang and "first_token_kl_mean" not in by_lang
    assert by_lang["val_gain_harmful"] == full["val_gain_harmful"]     # the same edit, the same margins
    with pytest.raises(ValueError, match="kl must be one of"):
        _trial(setup, [edit], kl="all")
    with pytest.raises(ValueError, match="at least one edit"):
        _trial(setup, [])


def test_edits_are_reverted_bit_exactly_and_a_real_edit_is_measured(setup):
    lm = setup[0]
    model = lm.model
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    first = _edit(model, 0, scale=0.5, seed=1)
    with first.applied(model):     # step 2 is solved for the model with step 1 applied
        second = _edit(model, LAYER, scale=0.5, seed=2)
    row = _trial(setup, [first, second])
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert row["first_token_kl_mean"] > 0 and row["val_gain_harmful"] != 0.0
    assert row["n_neurons"] == 16
    with pytest.raises(ValueError, match="fingerprint"):   # out of fitting order: refused, model untouched
        _trial(setup, [second, first])
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_trial_log_is_valid_json_after_every_trial_and_marks_completion(tmp_path):
    path = tmp_path / "sub" / "log.json"
    log = trials.TrialLog(path, {"model": "m", "before": {"target": 1.0}}, echo=False)
    for k in range(3):
        log.add({"trial": k, "score": 0.5 * k})
        record = json.loads(path.read_text())
        assert record["complete"] is False and [t["trial"] for t in record["trials"]] == list(range(k + 1))
        assert record["model"] == "m" and record["seconds"] >= 0
    log.finish()
    record = json.loads(path.read_text())
    assert record["complete"] is True and len(record["trials"]) == 3
    assert list(record) == ["model", "before", "seconds", "complete", "trials"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["log.json"]   # no temporary file left


def test_load_search_matches_its_pieces_and_refuses_bad_targets_first(tiny_dir, setup, tmp_path):
    _, cfg, anchors, _, before = setup
    with pytest.raises(ValueError, match="targets must be"):    # before any load: the folder does not exist
        trials.load_search(str(tmp_path / "no-model"), "auto", 0, ["en"])
    search = trials.load_search(str(tiny_dir), "auto", 0, ["zh", "ja", "th"])
    assert search.before == before
    assert search.gap == before[2] - before[0]
    assert [p.id for p in search.anchors.val_harmless] == [p.id for p in anchors.val_harmless]
    assert search.before_dict() == dict(zip(trials.GROUPS, before))
    row = trials.search_trial(search, [_edit(search.lm.model, LAYER, scale=0.0)], kl=None)
    assert row["score"] == 0.0


def test_load_stats_names_the_fix(tmp_path):
    from mlsafe.errors import UserError

    with pytest.raises(UserError, match="does not exist: run scripts/edit_search.py"):
        trials.load_stats(tmp_path / "none.pt", 17)
    torch.save({3: None}, tmp_path / "s.pt")
    with pytest.raises(UserError, match=r"holds layers \[3\], not --layer 17"):
        trials.load_stats(tmp_path / "s.pt", 17)


def test_search_arguments_are_shared():
    import argparse

    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="x.json")
    a = ap.parse_args(["m", "--stats-cache", "s.pt"])
    assert (a.model, a.data, a.lang, a.seed, a.out, a.layer, a.stats_cache) == ("m", "auto", "zh,ja,th", 0, None,
                                                                                 17, "s.pt")
    with pytest.raises(SystemExit):          # the stats cache is required where a layer is searched
        ap.parse_args(["m"])
    bare = argparse.ArgumentParser()
    trials.add_search_arguments(bare, what="x.json", layer=None)
    assert not hasattr(bare.parse_args(["m"]), "layer")


def test_layer_search_checks_the_cache_before_loading(tmp_path, monkeypatch):
    import argparse

    monkeypatch.setattr(trials, "load_search", lambda *a, **k: pytest.fail("loaded before the cache check"))
    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="x.json")
    with pytest.raises(SystemExit, match="does not exist"):
        trials.layer_search(ap.parse_args(["m", "--stats-cache", str(tmp_path / "none.pt")]))


def test_layer_search_gives_one_layer_or_every_layer_from_one_load(tmp_path, monkeypatch):
    import argparse
    from types import SimpleNamespace

    fused = lambda tag: SimpleNamespace(tag=tag, paired=SimpleNamespace(yty=torch.ones(1)))  # noqa: E731
    torch.save({15: fused("a"), 17: fused("b")}, tmp_path / "s.pt")
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(trials, "load_search", lambda *a, **k: SimpleNamespace(before_line=lambda: "before"))
    ap = argparse.ArgumentParser()
    trials.add_search_arguments(ap, what="x.json")
    args = ap.parse_args(["m", "--stats-cache", str(tmp_path / "s.pt")])
    st, _ = trials.layer_search(args)
    assert st.tag == "b" and len(loads) == 1
    every, _ = trials.layer_search(args, every_layer=True)
    assert sorted(every) == [15, 17] and every[17].tag == "b" and len(loads) == 2
