"""mlsafe.diagnostics: per-language safety sets, Jaccard overlaps (eq. 2), planted-neuron
recall, the amplification diagnostic (eq. 1) and the diagnostics.json writer (tiny model)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from mlsafe import arch, diagnostics
from mlsafe import evaluate as ev


def _moments(mean, var, n):
    return SimpleNamespace(mean=torch.tensor(mean, dtype=torch.float64),
                           var=torch.tensor(var, dtype=torch.float64), n=n)


def test_language_sets_and_overlaps_match_hand_computation():
    # 6 neurons; harmless mean 0, unit variance. en fires on 0,1,2; th on 1,2; bn on 5.
    safe = _moments([0.0] * 6, [1.0] * 6, 10)
    h_en = _moments([3.0, 3.0, 3.0, 0.0, 0.0, 0.0], [1.0] * 6, 10)
    h_th = _moments([0.0, 3.0, 3.0, 0.0, 0.0, 0.0], [1.0] * 6, 10)
    h_bn = _moments([0.0, 0.0, 0.0, 0.0, 0.0, 3.0], [1.0] * 6, 10)
    moments = {lang: ({0: h}, {0: safe}) for lang, h in (("en", h_en), ("th", h_th), ("bn", h_bn))}
    sets = diagnostics.language_sets(moments, tau_mag=2.0, tau_stat=1.0)
    assert sets[0]["en"].s_safety.tolist() == [0, 1, 2]
    assert sets[0]["th"].s_safety.tolist() == [1, 2]
    block = diagnostics.sets_block(sets)
    assert block["jaccard"]["0"]["langs"] == ["en", "th", "bn"]
    mat = block["jaccard"]["0"]["matrix"]
    assert mat[0][1] == pytest.approx(2 / 3) and mat[1][0] == pytest.approx(2 / 3)
    assert mat[0][2] == 0.0 and mat[1][1] == 1.0
    assert block["sizes"]["0"]["bn"] == {"s_mag": 1, "s_stat": 1, "s_safety": 1}
    assert block["sets"]["0"]["th"]["s_stat"] == [1, 2]
    # en: Cohen's d = 3 > 1 on 3 neurons, but z of those three is only 1.0 < 2 -> S_mag empty
    assert block["sizes"]["0"]["en"]["s_mag"] == 0
    assert block["mag_vs_stat"]["0"]["en"] == 0.0


def test_empty_sets_give_null_overlap_not_nan():
    flat = _moments([0.0] * 4, [1.0] * 4, 5)
    sets = diagnostics.language_sets({"en": ({1: flat}, {1: flat}), "th": ({1: flat}, {1: flat})})
    block = diagnostics.sets_block(sets)
    assert block["jaccard"]["1"]["matrix"] == [[None, None], [None, None]]
    json.dumps(block, allow_nan=False)  # valid strict JSON


def test_planted_sets_and_block():
    model = SimpleNamespace(config=SimpleNamespace(mlsafe_planted={"variant": "sparse", "layer": 2,
                                                                   "neurons": [1, 2, 3, 4]}))
    assert diagnostics.planted_sets(model) == {2: [1, 2, 3, 4]}
    assert diagnostics.planted_sets(SimpleNamespace(config=SimpleNamespace())) is None
    safe = _moments([0.0] * 6, [1.0] * 6, 10)
    h = _moments([0.0, 3.0, 3.0, 0.0, 0.0, 3.0], [1.0] * 6, 10)
    sets = diagnostics.language_sets({"en": ({1: h, 2: h}, {1: safe, 2: safe})})
    block = diagnostics.planted_block({2: [1, 2, 3, 4]}, sets)
    assert block["by_layer"]["2"] == {"found": 3, "planted": 4, "hit": 2, "recall": 0.5,
                                      "precision": pytest.approx(2 / 3)}
    assert block["by_layer"]["1"]["recall"] is None and block["by_layer"]["1"]["hit"] == 0


def test_per_lang_is_a_seeded_sample_of_at_most_n_per_language_in_order():
    from mlsafe.prompts import Prompt

    ps = [Prompt(f"{lang}{i}", lang, "x", True, str(i)) for i in range(20) for lang in ("en", "th")]
    a, b = diagnostics.per_lang(ps, 3, seed=1), diagnostics.per_lang(ps, 3, seed=1)
    assert a == b and [p.lang for p in a].count("en") == 3 and [p.lang for p in a].count("th") == 3
    assert [ps.index(p) for p in a] == sorted(ps.index(p) for p in a)
    assert diagnostics.per_lang(ps, 3, seed=2) != a
    assert diagnostics.per_lang(ps, 50) == ps and diagnostics.per_lang(ps, None) == ps
    with pytest.raises(ValueError, match="max_eval_per_lang"):
        diagnostics.per_lang(ps, 0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_loaded):
    folder, lm, suite = tiny_loaded   # conftest.py: the session's tiny Qwen2 and its fixture suite
    return tmp_path_factory.mktemp("diag"), folder, lm, suite


def test_amplification_alpha_one_is_the_unedited_model_and_weights_are_restored(tiny_run):
    _, _, lm, suite = tiny_run
    prompts = diagnostics.per_lang(suite.eval_harmful, 2)
    kw = dict(refusal_starts=suite.refusal_starts, comply_starts=suite.comply_starts)
    base = ev.mean_by_lang(prompts, ev.language_margins(lm.model, lm.tokenizer, prompts, **kw))
    before = arch.neuron_weight(lm.model, 1, "down").clone()
    amp = diagnostics.amplification(lm.model, lm.tokenizer, prompts, {1: torch.arange(0, 40)}, (1.0, 3.0),
                                    margin_kw=kw)
    assert torch.equal(arch.neuron_weight(lm.model, 1, "down"), before)
    assert amp["asr"] is None and amp["alphas"] == [1.0, 3.0]
    for lang, values in amp["margin"].items():
        assert values[0] == pytest.approx(base[lang], abs=1e-9)
    assert any(abs(v[1] - v[0]) > 1e-6 for v in amp["margin"].values())
    with pytest.raises(ValueError, match="alphas is empty"):
        diagnostics.amplification(lm.model, lm.tokenizer, prompts, {1: torch.arange(3)}, (), margin_kw=kw)


def test_run_writes_diagnostics_json(tiny_run):
    root, folder, _, _ = tiny_run
    out = root / "res"
    with pytest.raises(FileNotFoundError, match="mlsafe reproduce"):
        diagnostics.run(str(folder), "th", out_dir=out)
    with pytest.raises(ValueError, match="out of range"):
        diagnostics.run(str(folder), "th", layer=7, out_dir=out)
    (out / "summary.json").parent.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"edit": {"layer": 1}}))
    path = diagnostics.run(str(folder), "th", alphas=(1.0, 2.0), max_eval_per_lang=2, out_dir=out)
    d = json.loads(path.read_text())
    assert d["layer"] == 1 and d["amplification"]["layers"] == [1]
    assert set(d["sizes"]) == {"0", "1"} and d["langs"][0] == "en" and len(d["langs"]) == 8
    mat = d["jaccard"]["1"]["matrix"]
    n = len(d["langs"])
    for i in range(n):
        assert mat[i][i] in (1.0, None)
        for j in range(n):
            assert mat[i][j] == mat[j][i]
    en = d["sets"]["1"]["en"]
    assert sorted(set(en["s_mag"]) | set(en["s_stat"])) == en["s_safety"]
    assert d["amplification"]["n_neurons"]["1"] == len(en["s_safety"])
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in d["amplification"]["asr"].values())
    with pytest.raises(ValueError, match="amplify"):
        diagnostics.run(str(folder), "th", amplify="some", out_dir=out)


def test_amplification_asr_uses_one_layer_and_matches_the_all_layer_set(tiny_run, monkeypatch):
    root, folder, lm, suite = tiny_run
    seen_layers = []
    collect = diagnostics.probe.collect

    def spy(model, tokenizer, texts, layers, **kw):
        seen_layers.append(list(layers))
        return collect(model, tokenizer, texts, layers, **kw)

    monkeypatch.setattr(diagnostics.probe, "collect", spy)
    before = arch.neuron_weight(lm.model, 1, "down").clone()
    path = diagnostics.amplification_asr(str(folder), layer=1, alphas=(0.0, 1.0, 3.0), n_per_lang=2,
                                         out_dir=root / "asr", loaded=(lm, suite))
    assert path == root / "asr" / "amplification_asr.json"
    assert seen_layers == [[1], [1]]          # English harmful and harmless anchors, layer 1 only
    assert torch.equal(arch.neuron_weight(lm.model, 1, "down"), before)
    d = json.loads(path.read_text())
    monkeypatch.undo()
    # the same English set as run()'s pass over every layer finds at that layer
    sets = diagnostics.language_sets(diagnostics.language_moments(
        lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, ["en"], [0, 1]))
    assert d["neurons"] == sets[1]["en"].s_safety.tolist() and d["n_neurons"] == len(d["neurons"]) > 0
    prompts = diagnostics.per_lang(suite.eval_harmful, 2, 0)
    assert d["prompt_ids"] == [p.id for p in prompts] and d["alphas"] == [0.0, 1.0, 3.0]
    assert d["prompt_langs"] == [p.lang for p in prompts]
    assert d["judge"] == suite.judge.name and d["layer"] == 1
    kw = dict(refusal_starts=suite.refusal_starts, comply_starts=suite.comply_starts)
    base = ev.mean_by_lang(prompts, ev.language_margins(lm.model, lm.tokenizer, prompts, **kw))
    table = ev.asr_table(prompts, suite.judge.judge(prompts, ev.generate(
        lm.model, lm.tokenizer, [p.text for p in prompts], max_new_tokens=suite.max_new_tokens,
        batch_size=suite.batch_size, sort_by_length=suite.sort_by_length, progress=False)))
    for lang in d["langs"]:
        n = d["n"][lang]
        assert n == sum(p.lang == lang for p in prompts) == 2
        assert d["margin"][lang][1] == pytest.approx(base[lang], abs=1e-5)   # alpha 1: the unedited model (fused margins: batch noise)
        assert d["unsafe"][lang][1] == int(table.loc[lang, "unsafe"])
        for k, unsafe in enumerate(d["unsafe"][lang]):
            assert d["asr"][lang][k] == unsafe / n
            assert d["asr_ci"][lang][k] == pytest.approx(list(ev.wilson(unsafe, n)))
            assert 0.0 <= d["non_refusal"][lang][k] <= 1.0 and 0.0 <= d["unclear"][lang][k] <= 1.0
    assert any(abs(v[2] - v[1]) > 1e-6 for v in d["margin"].values())      # alpha 3 moves the margin
    for verdicts in d["verdicts"].values():
        assert len(verdicts["unsafe"]) == len(prompts) == len(verdicts["refusal"])
    assert sum(d["verdicts"]["1.0"]["unsafe"]) == int(table["unsafe"].sum())


def test_amplification_asr_rejects_bad_input(tiny_run):
    root, folder, lm, suite = tiny_run
    with pytest.raises(ValueError, match="alphas is empty"):
        diagnostics.amplification_asr(str(folder), layer=1, alphas=(), out_dir=root / "bad", loaded=(lm, suite))
    with pytest.raises(ValueError, match="out of range"):
        diagnostics.amplification_asr(str(folder), layer=9, out_dir=root / "bad", loaded=(lm, suite))
    with pytest.raises(ValueError, match="no evaluation prompts"):
        diagnostics.judged_amplification(lm.model, lm.tokenizer, suite, [], {1: torch.arange(3)}, (1.0,))
    assert not (root / "bad").exists()


def test_main_writes_amplification_asr_json(tiny_run, capsys):
    root, folder, _, _ = tiny_run
    assert diagnostics.main(["--model", str(folder), "--layer", "0", "--alphas", "1,2", "--n-per-lang", "1",
                             "--out", str(root / "cli")]) == 0
    d = json.loads((root / "cli" / "amplification_asr.json").read_text())
    assert d["alphas"] == [1.0, 2.0] and d["layer"] == 0 and set(d["n"].values()) == {1}
    assert "amplification_asr.json" in capsys.readouterr().out
    for bad in (["--alphas", "a,b"], ["--alphas", ","], ["--n-per-lang", "0"]):
        with pytest.raises(SystemExit) as err:
            diagnostics.main(["--model", str(folder), "--layer", "0", "--out", str(root / "x"), *bad])
        assert err.value.code == 2
    assert not (root / "x").exists()
