"""`make reproduce` end to end on a tiny random Qwen2 (fixtures, phrase judge), plus the models CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mlsafe import models, pipeline, results, tiny
from mlsafe.__main__ import main
from mlsafe.edit import SparseEdit
from mlsafe.langs import LANGS


@pytest.mark.slow
def test_reproduce_writes_the_common_schema(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS_ROOT", tmp_path)
    path = pipeline.reproduce("th", str(tiny_dir), seed=0, progress=False, extras=False)
    # a local folder gets "<basename>-<8 hex of its resolved path>": two folders named qwen2 never collide
    assert path == tmp_path / results.model_slug(str(tiny_dir)) / "th" / "summary.json"
    assert path.parent.parent.name.startswith("qwen2-") and len(path.parent.parent.name) == len("qwen2-") + 8
    s = json.loads(path.read_text())
    assert s["model"] == path.parent.parent.name and s["target_langs"] == ["th"] and s["langs"] == list(LANGS)
    for block in ("asr", "utility", "margin"):
        assert set(s[block]) == {"before", "after"}
    for when in ("before", "after"):
        assert set(s["asr"][when]) == set(LANGS)
        for lang, value in s["asr"][when].items():
            lo, hi = s["asr_ci"][when][lang]
            assert 0.0 <= lo <= value <= hi <= 1.0
    e = s["edit"]
    for key in ("layer", "n_neurons", "rank", "gamma", "lam", "fraction_of_parameters", "solve_seconds",
                "total_seconds", "random_control"):
        assert key in e
    assert 0 < e["fraction_of_parameters"] < 1 and set(e["random_control"]["asr"]) == {"th"}
    rc = e["random_control"]
    assert set(rc["non_refusal"]) == {"th"} and 0.0 <= rc["non_refusal"]["th"] <= 1.0
    mc = rc["margin_edit_vs_random"]   # edit - mean control margin, prompt by prompt
    assert mc["diff"] == pytest.approx(s["margin"]["after"]["th"] - rc["margin"]["th"], abs=1e-6)
    assert mc["ci"][0] <= mc["diff"] <= mc["ci"][1] and 0 < mc["p_value"] <= 1
    nrc = rc["compare_non_refusal_edit_vs_random"][0]["per_lang"]["th"]   # its own paired test, per prompt
    assert nrc["after"] == pytest.approx(rc["non_refusal"]["th"]) and 0 < nrc["mcnemar_p"] <= 1
    assert set(s["gap_closed_by"]) == {"non_refusal", "margin"}
    t = s["timing"]
    assert 0 < t["fit_seconds"] and 0 < t["evaluate_seconds"] and 0 < t["load_seconds"]
    assert t["load_seconds"] + t["fit_seconds"] + t["evaluate_seconds"] < t["run_seconds"]
    stages = ("fit_seconds", "evaluate_seconds", "evaluate_edited_seconds", "control_seconds", "kl_seconds")
    assert all(t[k] > 0 for k in stages) and sum(t[k] for k in stages) < t["run_seconds"]
    for name in ("responses_before.csv", "responses_after.csv", "edit.safetensors"):
        assert (path.parent / name).is_file()

    # the saved edit belongs to this model and no other
    edit = SparseEdit.load(path.parent / "edit.safetensors")
    assert edit.layer == e["layer"] and edit.neurons.numel() == e["n_neurons"]
    lm = models.load_model(str(tiny_dir))
    with edit.applied(lm.model):
        pass
    # the KL read from the edited harmless generation equals the two-pass KL (issue 17)
    from mlsafe.evaluate import first_token_kl
    from mlsafe.suites import make_suite
    suite = make_suite(lm, "auto", 0, "cpu")
    two_pass = first_token_kl(lm.model, lm.tokenizer, list(suite.eval_harmless), edit)
    assert s["kl"]["after"] == pytest.approx(two_pass, rel=1e-4, abs=1e-9) and max(two_pass.values()) > 0
    other = tiny.build_model("qwen2", lm.tokenizer, seed=1)
    with pytest.raises(ValueError, match="fingerprint"):
        edit.apply(other)

    # the diagnostics alone, margins only, at the main run's edit layer
    assert main(["diagnose", "--model", str(tiny_dir), "--lang", "th", "--margins-only"]) == 0
    d = json.loads((path.parent / "diagnostics.json").read_text())
    assert d["layer"] == e["layer"] and d["amplification"]["asr"] is None
    assert set(d["amplification"]["margin"]) == set(LANGS) and str(e["layer"]) in d["jaccard"]


def test_cli_rejects_an_unknown_language(capsys):
    assert main(["reproduce", "--lang", "xx"]) == 2
    err = capsys.readouterr().err
    assert "unknown target language" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_baselines_rejects_bad_options_before_loading(capsys):
    assert main(["baselines", "--lang", "th", "--only", "cost", "speed"]) == 2
    assert "unknown stage(s) ['speed']" in capsys.readouterr().err
    assert main(["baselines", "--lang", "th", "--max-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-steps must be an integer >= 1" in err and len(err.strip().splitlines()) == 1


def test_cli_rejects_an_unknown_ablation(capsys):
    assert main(["ablate", "--lang", "th", "--only", "depth"]) == 2
    assert "unknown ablation(s) ['depth']" in capsys.readouterr().err


def test_cli_version_and_debug(capsys):
    import mlsafe

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and mlsafe.__version__ in capsys.readouterr().out
    from mlsafe.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "reproduce", "--lang", "xx"])


def test_cli_ablate_writes_only_the_chosen_ablations(tiny_dir, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setattr(results, "RESULTS_ROOT", tmp_path)
    assert main(["ablate", "--model", str(tiny_dir), "--lang", "th", "--only", "multi_layer",
                 "--max-layers", "2"]) == 0
    df = pd.read_csv(tmp_path / results.model_slug(str(tiny_dir)) / "th" / "ablations.csv")
    assert set(df["ablation"]) == {"multi_layer"} and set(df["value"]) == {1, 2}
    assert set(df["lang"]) == set(LANGS)


def test_load_model_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="owner/name"):
        models.load_model(str(tmp_path / "missing"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="DEVICE=cpu"):
            models.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown DEVICE"):
        models.resolve_device("tpu")


def test_tiny_folder_loads_as_a_test_model(tiny_dir):
    lm = models.load_model(str(tiny_dir))
    assert lm.kind == "tiny" and lm.name == results.model_slug(str(tiny_dir)) and lm.name.startswith("qwen2-")
    assert not lm.model.training


def test_gap_closed_by_reads_non_refusal_and_negated_margins():
    """The non-refusal and margin versions of the gap (a margin gap is English's margin minus
    the target's: refusal margins are higher where the model refuses)."""
    before = {"non_refusal": {"en": 0.4, "ja": 0.8, "th": 0.3}, "margin": {"en": 2.0, "ja": -1.0, "th": 3.0}}
    after = {"non_refusal": {"en": 0.4, "ja": 0.6, "th": 0.3}, "margin": {"en": 2.0, "ja": 0.5, "th": 3.0}}
    control = {"non_refusal": {"ja": 0.7}, "margin": {"ja": -0.7}}
    g = pipeline.gap_closed_by(before, after, control, ["ja", "th"])
    assert g["non_refusal"]["edit"]["per_lang"] == {"ja": pytest.approx(0.5), "th": None}   # th: no gap
    assert g["non_refusal"]["random_control"]["summed"] == pytest.approx(0.25)
    assert g["margin"]["edit"]["summed"] == pytest.approx(0.5) and g["margin"]["random_control"]["summed"] == \
        pytest.approx(0.1)


def test_cached_evaluation_keeps_responses_and_margins(tiny_loaded, tmp_path, monkeypatch):
    """A cached evaluation returns the first one's responses and margins without a forward
    pass for the margins; other start strings recompute them (issue 17: minutes on a real model)."""
    import dataclasses

    from mlsafe.evaluate import run as run_mod

    monkeypatch.setenv("MLSAFE_CACHE", str(tmp_path))
    _, lm, suite = tiny_loaded
    suite = dataclasses.replace(suite, cache_responses=True, eval_harmful=suite.eval_harmful[:6],
                                eval_harmless=suite.eval_harmless[:4])
    base = pipeline.response_cache_key(lm, suite)
    first = pipeline.cached_evaluation(lm, suite, base, None, seed=0, progress=False)
    calls = []
    real = run_mod.language_margins
    monkeypatch.setattr(run_mod, "language_margins", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = pipeline.cached_evaluation(lm, suite, base, None, seed=0, progress=False)
    assert not calls and again.responses == first.responses and torch.equal(again.margins, first.margins)
    other = dataclasses.replace(suite, refusal_starts={k: [*v, "Nope"] for k, v in suite.refusal_starts.items()})
    pipeline.cached_evaluation(lm, other, base, None, seed=0, progress=False)
    assert calls == [1]
    pipeline.cached_evaluation(lm, other, base, None, seed=0, progress=False)   # now kept for these starts
    assert calls == [1]


def test_seed_block_keeps_each_seeds_goal_inputs():
    """over_seeds.per_seed holds what the goal table reads of every seed (limits.seed_summaries)."""
    from mlsafe import limits

    def run(seed, closed):
        return {"seed": seed, "asr": {"before": {"th": 0.5}, "after": {"th": 0.5 - closed}},
                "utility": {"before": {"th": 1.0}, "after": {"th": 1.0}},
                "margin": {"before": {"th": 0.0}, "after": {"th": closed}},
                "gap_closed": {"edit": {"summed": closed}, "random_control": {"summed": 0.0}},
                "gap_closed_by": {"margin": {"edit": {"summed": closed}, "random_control": {"summed": 0.0}}},
                "kl": {"after": {"th": seed / 10}}, "target_langs": ["th"],
                "edit": {"layer": 1, "n_neurons": 4, "random_control": {"asr": {"th": 0.5}}}}

    runs = [run(0, 0.4), run(1, 0.1)]
    block = pipeline.seed_block(runs)
    assert [r["seed"] for r in block["per_seed"]] == [0, 1]
    summary = {**runs[0], "over_seeds": block}
    per = limits.seed_summaries(summary)
    assert [limits.goal_rows(per[k])["asr"]["gap_closed"] for k in ("seed 0", "seed 1")] == [0.4, 0.1]
    assert limits.goal_rows(per["seed 1"])["asr"]["harmless_kl"] == pytest.approx(0.1)
