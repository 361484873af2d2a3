"""mlsafe.data: every loader on its fixture, the overlap check, offline failures, translation plumbing."""

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from mlsafe.data import (FIXTURES_DIR, MGSM_LANGS, MMMLU_CONFIGS, PINNED, DataUnavailable, check_no_overlap,
                         find_overlaps, load_anchors_harmful, load_anchors_harmless, load_mgsm, load_mmmlu,
                         load_multi_strongreject, load_multijail, load_strongreject, mt_instruction,
                         read_parallel_folder, translate, write_parallel_folder)
from mlsafe.data.loaders import REFUSAL_RESPONSES, SPECS
from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt

FX = "fixtures"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Never reach the network, never hit a cached copy: offline flags and an empty HF home."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets", raising=False)


def test_fixtures_equal_their_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("build", Path(__file__).parent / "fixtures" / "build_data_fixtures.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.write(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    # fixtures/shared mirrors ../shared/data and has its own generator test (tests/test_real_data.py)
    shipped = sorted(p.relative_to(FIXTURES_DIR) for p in FIXTURES_DIR.rglob("*")
                     if p.is_file() and "shared" not in p.relative_to(FIXTURES_DIR).parts)
    assert made == shipped
    for rel in made:
        if rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / rel), pd.read_parquet(FIXTURES_DIR / rel))
        else:
            assert (tmp_path / rel).read_bytes() == (FIXTURES_DIR / rel).read_bytes(), rel


def test_strongreject_and_multi_strongreject():
    en = load_strongreject(FX)
    assert len(en) == 12 and {p.lang for p in en} == {"en"} and all(p.harmful for p in en)
    multi = load_multi_strongreject(source=FX)
    assert len(multi) == 12 * 8 and [p.lang for p in multi[::12]] == list(LANGS)
    by_pid = {}
    for p in multi:
        by_pid.setdefault(p.parallel_id, set()).add(p.lang)
    assert set(by_pid) == {p.parallel_id for p in en} and all(v == set(LANGS) for v in by_pid.values())
    assert len({p.id for p in multi}) == len(multi)
    th = load_multi_strongreject(source=FX, langs=["th"])
    assert {p.lang for p in th} == {"th"} and th[3].parallel_id == "strongreject-3" and th[3].id == "strongreject-3-th"


def test_multijail_columns_per_language():
    default = load_multijail(FX)
    assert [p.lang for p in default[::6]] == ["en", "zh", "vi", "th", "bn"]
    sw = load_multijail(FX, langs=["sw", "jv"])
    assert len(sw) == 12 and sw[0].parallel_id == sw[6].parallel_id == "multijail-0"
    with pytest.raises(ValueError, match="MultiJail has no languages"):
        load_multijail(FX, langs=["he"])


def test_anchor_sets():
    harmful = load_anchors_harmful(FX, langs=LANGS)
    en = [p for p in harmful if p.lang == "en"]
    assert len(en) == 12 and {p.parallel_id.rsplit("-", 1)[0] for p in en} == {"harmfulqa", "catharmfulqa",
                                                                                 "llm_lat_harmful"}
    assert all(p.harmful for p in harmful) and len(harmful) == 12 * 8
    assert {p.parallel_id for p in harmful if p.lang == "bn"} == {p.parallel_id for p in en}
    harmless = load_anchors_harmless(FX, langs=["en", "th"], limit=5)
    assert not any(p.harmful for p in harmless)
    assert len([p for p in harmless if p.lang == "en"]) == 5 and len([p for p in harmless if p.lang == "th"]) == 12
    assert len(load_anchors_harmful(FX, limit_per_source=2)) == 6
    # X_safe needs whole conversations: harmful anchors carry a refusal, harmless ones an answer
    assert all(p.response for p in harmful) and all(p.response for p in harmless)
    lat = next(p for p in en if p.parallel_id == "llm_lat_harmful-0")
    assert lat.response == "I'm sorry, I can't help with that."  # LLM-LAT's own 'chosen' refusal
    assert next(p for p in harmful if p.lang == "th").response == REFUSAL_RESPONSES["th"]
    assert [p.response for p in harmless if p.lang == "en"][:2] == ["7", "10"]
    with pytest.raises(ValueError, match="unknown language"):
        load_anchors_harmful(FX, langs=["xx"])


def test_mgsm_and_mmmlu():
    mgsm = load_mgsm(LANGS, FX)
    assert sorted({p.lang for p in mgsm}) == sorted(MGSM_LANGS)  # vi, id, he skipped: not in MGSM
    first_th = next(p for p in mgsm if p.lang == "th")
    assert first_th.answer == "7" and "2" in first_th.text and not first_th.harmful
    with pytest.raises(ValueError, match="MGSM covers none"):
        load_mgsm(["vi", "he"], FX)
    mm = load_mmmlu(["zh", "th", "bn"], FX)
    assert sorted({p.lang for p in mm}) == ["bn", "zh"] and len(mm) == 12
    assert mm[1].answer == "B" and "\nB. 91\n" in mm[1].text
    assert len(load_mmmlu(list(MMMLU_CONFIGS), FX, limit_per_lang=2)) == 8


def test_overlap_check():
    test = load_multi_strongreject(source=FX)
    anchors = load_anchors_harmful(FX, langs=LANGS) + load_anchors_harmless(FX, langs=LANGS)
    check_no_overlap(anchors, test)  # the fixtures are disjoint
    leaked = [Prompt("a-exact", "en", test[0].text, True, "a"),
              Prompt("a-near", "th", "  " + test[40].text.upper().replace(":", " ;") + "!!", True, "b")]
    assert [(a.id, t.id) for a, t in find_overlaps(anchors + leaked, test)] == [
        ("a-exact", test[0].id), ("a-near", test[40].id)]
    with pytest.raises(ValueError, match="2 anchor prompt") as err:
        check_no_overlap(anchors + leaked, test)
    assert test[0].id in str(err.value) and "a-near" in str(err.value)


def test_offline_hub_failure_names_dataset_and_folder(monkeypatch, tmp_path):
    root = tmp_path / "data"
    monkeypatch.setenv("MLSAFE_DATA", str(root))
    with pytest.raises(DataUnavailable) as err:
        load_strongreject()
    msg = str(err.value)
    for part in ("walledai/StrongREJECT", PINNED["walledai/StrongREJECT"], str(root / "strongreject"),
                 "DATA=fixtures", "hf download"):
        assert part in msg
    with pytest.raises(DataUnavailable, match=r"openai/MMMLU.*config JA_JP"):
        load_mmmlu(["ja"])


def test_explicit_folder_missing_data_does_not_try_hub(tmp_path):
    with pytest.raises(DataUnavailable, match="no data files") as err:
        load_multijail(tmp_path)
    assert str(tmp_path / "multijail") in str(err.value)


def test_local_data_root_is_used_before_hub(monkeypatch, tmp_path):
    shutil.copytree(FIXTURES_DIR / "strongreject", tmp_path / "strongreject")
    monkeypatch.setenv("MLSAFE_DATA", str(tmp_path))
    assert [p.text for p in load_strongreject()] == [p.text for p in load_strongreject(FX)]


def test_every_dataset_has_a_pinned_revision():
    assert {s.hub for s in SPECS.values()} <= set(PINNED)
    assert all(rev for rev in PINNED.values())


def test_parallel_folder_roundtrip_and_missing_language(tmp_path):
    ps = [Prompt("x-0-th", "th", "ก", True, "x-0", response="ค"), Prompt("x-1-th", "th", "ข", True, "x-1", answer="3"),
          Prompt("x-0-he", "he", "א", True, "x-0", response="ב")]
    write_parallel_folder(ps, tmp_path)
    back = {p.id: p for p in read_parallel_folder(tmp_path, ["th", "he"], harmful=True)}
    assert back["x-0-th"] == ps[0] and back["x-0-he"] == ps[2]
    assert back["x-1-th"] == replace(ps[1], response=REFUSAL_RESPONSES["th"])  # harmful: refusal filled in
    assert read_parallel_folder(tmp_path, ["th"], harmful=False)[1].response is None
    with pytest.raises(DataUnavailable, match=r"\['bn'\].*mlsafe.data.translate"):
        read_parallel_folder(tmp_path, ["th", "bn"], harmful=True)


def test_mt_instruction_templates():
    assert mt_instruction("hello", "zh") == "把下面的文本翻译成中文，不要额外解释。\n\nhello"
    assert mt_instruction("hello", "th").startswith("Translate the following segment into Thai, without")
    with pytest.raises(ValueError, match="unknown target"):
        mt_instruction("hello", "xx")


def test_translate_plumbing_with_tiny_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlsafe import tiny

    folder = tiny.build(tmp_path, archs=("llama",))["llama"]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    src = load_strongreject(FX)[:3] + [Prompt("x-0-th", "th", "ก", True, "x-0", answer="1", response="ข")]
    out = translate(src, ["th", "bn"], model=model, tokenizer=tok, max_new_tokens=4, progress=False)
    assert [p.lang for p in out] == ["th"] * 3 + ["bn"] * 4  # a Thai prompt is not translated into Thai
    assert [p.id for p in out[:3]] == ["strongreject-0-th", "strongreject-1-th", "strongreject-2-th"]
    assert out[-1].parallel_id == "x-0" and all(p.harmful for p in out)
    assert out[-1].answer == "1" and out[-1].response is not None  # the response is translated too
    assert all(p.response is None for p in out[:-1])


def test_real_suite_on_fixtures(tmp_path):
    from mlsafe.suites import pick_judge, real_suite
    from mlsafe.evaluate import GuardJudge, RefusalPhraseJudge

    suite = real_suite("fixtures")
    assert suite.name == "fixtures" and isinstance(suite.judge, RefusalPhraseJudge)
    assert len(suite.eval_harmful) == 96 and {p.lang for p in suite.eval_harmless} == set(MGSM_LANGS)
    assert suite.correct("so it is 7.", "7") and not suite.correct("8", "7")
    small = real_suite("fixtures", n_anchors=3, seed=1)
    assert len({p.parallel_id for p in small.anchors_harmful}) == 3 and len(small.anchors_harmful) == 24
    assert {p.parallel_id for p in small.anchors_harmful} == {
        p.parallel_id for p in real_suite("fixtures", n_anchors=3, seed=1).anchors_harmful}
    assert isinstance(pick_judge("auto", "cuda"), GuardJudge)  # lazy: nothing is loaded here
    shutil.copytree(FIXTURES_DIR, tmp_path / "root")
    leak = tmp_path / "root" / "translations" / "anchors_harmful" / "th.csv"
    df = pd.read_csv(leak, dtype=str, keep_default_na=False)
    df.loc[0, "text"] = load_multi_strongreject(source=FX, langs=["th"])[5].text
    df.to_csv(leak, index=False)
    with pytest.raises(ValueError, match="overlap the test set"):
        real_suite(str(tmp_path / "root"))
