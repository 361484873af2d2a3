"""The committed results: schema, internal consistency, and golden numbers against a rerun.

Every summary.json under results/ must follow shared/design.md; the ASR it reports must
be what mlsafe.evaluate computes from its own per-prompt CSV; and where the organism is
in the local cache, a fresh evaluation of it must reproduce the committed numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlsafe import evaluate as ev
from mlsafe.langs import LANGS
from mlsafe.organism import is_refusal
from mlsafe.prompts import Prompt

ROOT = Path(__file__).resolve().parents[1] / "results"
SUMMARIES = sorted(ROOT.glob("*/*/summary.json"))
ORGANISM_TH = ROOT / "organism" / "th"


def _id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}"


def test_results_exist():
    assert (ORGANISM_TH / "summary.json").is_file(), "run `make reproduce LANG=th` and commit results/"


@pytest.mark.parametrize("path", SUMMARIES, ids=_id)
def test_summary_schema(path):
    s = json.loads(path.read_text())
    assert s["langs"] == list(LANGS) and s["target_langs"] and isinstance(s["seed"], int)
    for block in ("asr", "utility", "margin"):
        assert set(s[block]) == {"before", "after"}, block
    for when in ("before", "after"):
        for lang in LANGS:
            value = s["asr"][when][lang]
            lo, hi = s["asr_ci"][when][lang]
            assert 0.0 <= lo <= value <= hi <= 1.0
        # utility exists where a task measures it (the real model: MGSM's five languages only)
        assert s["utility"][when] and set(s["utility"][when]) <= set(LANGS)
        assert all(0.0 <= v <= 1.0 for v in s["utility"][when].values())
    edit = s["edit"]
    for key in ("layer", "n_neurons", "rank", "gamma", "lam", "fraction_of_parameters", "solve_seconds",
                "total_seconds", "random_control"):
        assert key in edit, key
    assert 0.0 < edit["fraction_of_parameters"] < 1.0


@pytest.mark.parametrize("path", SUMMARIES, ids=_id)
def test_summary_asr_equals_the_per_prompt_csv(path):
    """The evaluation module, re-run on the saved judgments, gives the summary's ASR exactly."""
    s = json.loads(path.read_text())
    for when in ("before", "after"):
        df = pd.read_csv(path.parent / f"responses_{when}.csv", keep_default_na=False)
        prompts = [Prompt(r.id, r.lang, r.prompt, True, r.parallel_id) for r in df.itertuples()]
        judgments = [ev.Judgment(bool(u), None, "", "") for u in df["unsafe"]]
        asr, _ = ev.summary_blocks(ev.asr_table(prompts, judgments))
        assert asr == pytest.approx(s["asr"][when], abs=1e-12)


def test_organism_judgments_follow_its_refusal_rule():
    df = pd.read_csv(ORGANISM_TH / "responses_before.csv", keep_default_na=False)
    assert len(df) == 8 * 100
    assert list(df["unsafe"]) == [not is_refusal(r) and bool(r.strip()) for r in df["response"]]


@pytest.mark.slow
def test_golden_numbers_of_the_cached_organism():
    """Rerun the evaluation of the cached seed-0 organism: ASR and utility must match the
    committed summary (greedy decoding, one thread: exact on the same machine; 0.02 slack
    for another CPU). Skipped where the organism is not cached (it takes minutes to train)."""
    from mlsafe.organism import train

    if not (train.organism_dir(seed=0, variant="sparse") / "config.json").exists():
        pytest.skip("the seed-0 organism is not in the cache (make reproduce trains it)")
    from mlsafe.models import load_model
    from mlsafe.pipeline import evaluate, make_suite

    s = json.loads((ORGANISM_TH / "summary.json").read_text())
    lm = load_model("organism", seed=0)
    res = evaluate(lm, make_suite(lm, "auto", 0, "cpu"), progress=False)
    asr, _ = ev.summary_blocks(res.table)
    assert asr == pytest.approx(s["asr"]["before"], abs=0.02)
    assert res.utility == pytest.approx(s["utility"]["before"], abs=0.02)


def test_write_atomic_replaces_the_file_with_ordinary_permissions(tmp_path):
    import os

    from mlsafe.results import read_json, write_atomic, write_json

    path = tmp_path / "sub" / "summary.json"
    write_json(path, {"a": 1})
    write_atomic(path, '{"a": 2}')
    assert read_json(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_publish_folder_keeps_a_concurrent_winner(tmp_path):
    """Two processes fill the same cache entry: the second rename keeps the first's folder
    and removes its own temporary folder; a failed rename with no winner still raises."""
    from mlsafe.results import publish_folder

    target = tmp_path / "entry"
    first, second = tmp_path / ".entry.a", tmp_path / ".entry.b"
    for d, tag in ((first, "a"), (second, "b")):
        d.mkdir()
        (d / "config.json").write_text(tag)
    publish_folder(first, target)
    publish_folder(second, target)
    assert (target / "config.json").read_text() == "a" and not first.exists() and not second.exists()
    blocker = tmp_path / "half"
    (blocker / "sub").mkdir(parents=True)    # a non-empty folder without the marker
    third = tmp_path / ".half.c"
    third.mkdir()
    with pytest.raises(OSError):
        publish_folder(third, blocker)
    assert not third.exists()
