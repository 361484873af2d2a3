"""The run commands check their arguments before any model is loaded: one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from mlsafe import pipeline, results, tiny
from mlsafe.__main__ import main
from mlsafe.edit import SparseEdit


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """Loading a model fails the test: every rejection must come before it."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline, "load", refuse)
    monkeypatch.setattr(results, "RESULTS_ROOT", tmp_path / "results")


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


CUDA_N = torch.cuda.device_count()


@pytest.mark.parametrize("argv, needle", [
    (["reproduce", "--rank", "0"], "--rank must be an integer >= 1, got '0'"),
    (["reproduce", "--rank", "-3"], "--rank must be an integer >= 1"),
    (["reproduce", "--rank", "2.5"], "--rank must be an integer >= 1"),
    (["reproduce", "--layer", "abc"], "--layer (auto or an index) must be an integer >= 0, got 'abc'"),
    (["reproduce", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["reproduce", "--seeds", "1", "-2"], "--seeds must be an integer >= 0"),
    (["reproduce", "--device", "tpu"], "unknown --device 'tpu'"),
    (["reproduce", "--device", "cuda0"], "unknown --device 'cuda0'"),
    (["reproduce", "--device", f"cuda:{CUDA_N}"], "CUDA device"),
    (["ablate", "--device", "gpu"], "unknown --device 'gpu'"),
    (["ablate", "--max-layers", "0"], "--max-layers must be an integer >= 1"),
    (["diagnose", "--device", "cuda:x"], "unknown --device 'cuda:x'"),
    (["diagnose", "--lang", "th"], "summary.json not found"),
])
def test_bad_arguments_fail_before_the_model_loads(no_model, capsys, argv, needle):
    assert main(argv) == 2
    _one_line_error(capsys, needle)


def test_a_results_path_that_is_a_file_fails_before_the_model_loads(no_model, capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setattr(results, "RESULTS_ROOT", blocker)
    for cmd in ("reproduce", "ablate", "diagnose"):
        assert main([cmd]) == 2
        _one_line_error(capsys, "is a file")


@pytest.mark.slow
def test_a_huge_rank_is_clamped_and_the_effective_rank_recorded(tmp_path, monkeypatch, capsys):
    folder = tiny.build(tmp_path / "tiny", seed=0, archs=("qwen2",))["qwen2"]
    monkeypatch.setattr(results, "RESULTS_ROOT", tmp_path / "results")
    assert main(["reproduce", "--model", str(folder), "--lang", "th", "--rank", "100000", "--no-extras"]) == 0
    out = results.results_dir(str(folder), "th")
    e = json.loads((out / "summary.json").read_text())["edit"]
    edit = SparseEdit.load(out / "edit.safetensors")
    effective = edit.factors["gate"][0].shape[1]
    assert effective == min(edit.d_in, e["n_neurons"]) < 100000
    assert e["rank"] == effective == edit.hparams["rank"] and e["requested_rank"] == 100000
    assert edit.hparams["requested_rank"] == 100000

    # before: --seed 1 after seed 0 left a seed-1 summary beside seed-0 responses and edit; now the
    # main seed's files are untagged, so the folder is seed 1's complete set
    assert main(["reproduce", "--model", str(folder), "--lang", "th", "--seed", "1", "--no-extras"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 1
    assert SparseEdit.load(out / "edit.safetensors").hparams["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["edit.safetensors", "responses_after.csv",
                                                     "responses_before.csv", "summary.json"]

    # a rerun that would drop a file of the earlier run is refused before the model loads
    (out / "diagnostics.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(pipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    capsys.readouterr()
    assert main(["reproduce", "--model", str(folder), "--lang", "th", "--no-extras"]) == 2
    _one_line_error(capsys, "would drop diagnostics.json", "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
