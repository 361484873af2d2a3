"""mlsafe.data.real: loaders on the synthetic fixtures, row alignment and counts on the shared
real data (when ../shared/data exists beside the repository), validation errors, near
duplicates, and the real-model suite on a tiny model with fixture data."""

from __future__ import annotations

import dataclasses
import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

import mlsafe.evaluate
from mlsafe import models, tiny
from mlsafe.data import real
from mlsafe.data.loaders import MULTIJAIL_LANGS, DataUnavailable
from mlsafe.data.overlap import check_no_overlap, find_near_duplicates, overlap_report
from mlsafe.errors import UserError
from mlsafe.evaluate import Judgment
from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FIX = real.SHARED_FIXTURES
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared real data at {SHARED} "
                                  "(../shared/data beside the repository); the fixture tests still run")


def by_lang(prompts):
    return Counter(p.lang for p in prompts)


# ------------------------------------------------------------------ loaders on fixtures
def test_polyrefuse_fixture_rows_pair_across_languages():
    train = real.load_polyrefuse_harmful(FIX, "train")
    assert by_lang(train) == {"en": 8, "zh": 8, "ja": 8, "th": 8}
    assert {p.source for p in train} == {"polyrefuse-train"} and all(p.harmful for p in train)
    assert all(p.cluster == p.parallel_id and p.id == f"{p.parallel_id}-{p.lang}" for p in train)
    pid = "polyrefuse-harmful-train-3"
    texts = {p.lang: p.text for p in train if p.parallel_id == pid}
    assert set(texts) == {"en", "zh", "ja", "th"} and texts["en"].startswith("[harmful request train 3")
    test = real.load_polyrefuse_harmful(FIX, "test", langs=("en", "th"))
    assert by_lang(test) == {"en": 10, "th": 10} and {p.source for p in test} == {"polyrefuse-test"}


def test_polyrefuse_harmless_zh_has_its_own_rows_and_test_has_no_zh():
    train = real.load_polyrefuse_harmless(FIX, "train")
    assert by_lang(train) == {"en": 8, "zh": 6, "ja": 8, "th": 8} and not any(p.harmful for p in train)
    zh = {p.parallel_id for p in train if p.lang == "zh"}
    en = {p.parallel_id for p in train if p.lang == "en"}
    assert not zh & en and all(pid.startswith("polyrefuse-harmless-train-zh-") for pid in zh)
    ja = {p.parallel_id for p in train if p.lang == "ja"}
    assert ja == en
    test = real.load_polyrefuse_harmless(FIX, "test")
    assert by_lang(test) == {"en": 6, "ja": 6, "th": 6}
    with pytest.raises(ValueError, match="no languages"):
        real.load_polyrefuse_harmless(FIX, "test", langs=("zh",))


def test_english_sets_multijail_and_mgsm_fixtures():
    sr = real.load_strongreject(FIX)
    assert len(sr) == 6 and len({p.cluster for p in sr}) == 6  # own clusters, not the categories
    safe, unsafe = real.load_xstest(FIX, "safe"), real.load_xstest(FIX, "unsafe")
    assert len(safe) == 6 and not any(p.harmful for p in safe) and {p.source for p in safe} == {"xstest-safe"}
    assert len(unsafe) == 4 and all(p.harmful for p in unsafe)
    mj = real.load_multijail(FIX, hub=False)  # MultiJail.csv starts with a BOM, as the real file
    assert by_lang(mj) == {lang: 8 for lang in ("en", "zh", "vi", "th", "bn")}
    assert by_lang(real.load_multijail(FIX, ["sw", "ko"], hub=False)) == {"sw": 8, "ko": 8}
    mgsm = real.load_mgsm(FIX, hub=False)
    assert by_lang(mgsm) == {lang: 8 for lang in ("en", "zh", "ja", "th", "bn")}
    last = [p for p in mgsm if p.parallel_id == "mgsm-7"]
    assert {p.answer for p in last} == {"2125"}  # "2,125" in the file
    en = next(p for p in last if p.lang == "en")
    assert en.text.startswith("Question: [maths problem 7") and en.text.endswith("\nAnswer:")
    assert next(p for p in last if p.lang == "th").text.startswith("โจทย์: ")
    assert mlsafe.evaluate.mgsm_correct("So the total is 2,125.", en.answer)


def test_templated_prompts_cover_languages_without_real_sets():
    harm = real.load_templated(["id", "he"])
    assert by_lang(harm) == {"id": 40, "he": 40} and {p.source for p in harm} == {"templated"}
    assert all(p.cluster.startswith("templated-eval-harm-") and p.cluster != p.parallel_id for p in harm)
    assert all(p.parallel_id.startswith(p.cluster) for p in harm)
    near = real.load_templated(LANGS, harmful=False)
    assert set(by_lang(near).values()) == {8} and not any(p.harmful or p.answer for p in near)


def test_clean_text_drops_controls_but_keeps_format_characters():
    assert real.clean_text("  a\x00b\r\nc\x1b\x85 ") == "ab\nc"
    bengali = "ক্\u200dষ"                      # a zero-width joiner changes the shaping: kept
    assert real.clean_text(bengali) == bengali and real.clean_text("a\tb\u200bc") == "a\tb\u200bc"


# ------------------------------------------------------------------ the shared real data
@needs_shared
def test_shared_polyrefuse_harmful_counts_and_row_alignment():
    for split, n in {"train": 260, "val": 39, "test": 572}.items():
        assert real.POLYREFUSE_HARMFUL_ROWS[split] == n
        prompts = real.load_polyrefuse_harmful(SHARED, split)
        assert by_lang(prompts) == {lang: n for lang in ("en", "zh", "ja", "th")}
        english = json.loads((SHARED / "polyrefuse" / "english" / f"harmful_{split}.json").read_text())
        for lang in ("zh", "ja", "th"):
            raw = json.loads((SHARED / "polyrefuse" / f"harmful_{split}_translated_{lang}.json").read_text())
            assert len(raw) == len(english) == n
            assert [r["category"] for r in raw] == [e["category"] for e in english]
            if split == "test":  # the test files carry the English text too: it must be the same row
                assert [r["instruction"] for r in raw] == [e["instruction"] for e in english]
        en = {p.parallel_id: p.text for p in prompts if p.lang == "en"}
        assert [en[f"polyrefuse-harmful-{split}-{i}"] for i in range(n)] == \
            [real.clean_text(e["instruction"]) for e in english]


@needs_shared
def test_shared_harmless_multijail_english_sets_and_mgsm():
    for split in ("train", "val"):
        assert by_lang(real.load_polyrefuse_harmless(SHARED, split)) == {"en": 200, "zh": 200, "ja": 200, "th": 200}
    assert by_lang(real.load_polyrefuse_harmless(SHARED, "test")) == {"en": 500, "ja": 500, "th": 500}
    assert by_lang(real.load_multijail(SHARED, hub=False)) == {lang: 315 for lang in ("en", "zh", "vi", "th", "bn")}
    assert len(real.load_strongreject(SHARED)) == 313
    assert len(real.load_xstest(SHARED, "safe")) == 250 and len(real.load_xstest(SHARED, "unsafe")) == 200
    mgsm = real.load_mgsm(SHARED, hub=False)   # the loader checks equal answers row by row
    assert by_lang(mgsm) == {lang: 250 for lang in ("en", "zh", "ja", "th", "bn")}
    assert all(mlsafe.evaluate.utility.canonical_number(p.answer) == p.answer for p in mgsm)


@needs_shared
def test_shared_anchor_overlap_with_polyrefuse_test_is_found():
    anchors = real.load_polyrefuse_harmful(SHARED, "train") + real.load_polyrefuse_harmful(SHARED, "val")
    rep = overlap_report(anchors, real.load_polyrefuse_harmful(SHARED, "test"))
    # measured: en 1 exact + 4 near (5-gram Jaccard >= 0.8), th 3 exact
    assert (rep["en"]["exact"], rep["en"]["near"], rep["th"]["exact"]) == (1, 4, 3)
    sr = overlap_report(real.load_strongreject(SHARED), real.load_polyrefuse_harmful(SHARED, "test", langs=("en",)))
    assert len(sr["en"]["anchor_ids"]) == 313     # StrongREJECT lies inside PolyRefuse's test split


# ------------------------------------------------------------------ validation errors
@pytest.fixture
def root(tmp_path):
    shutil.copytree(FIX, tmp_path / "data")
    return tmp_path / "data"


def _edit_json(path: Path, fn):
    rows = json.loads(path.read_text(encoding="utf-8"))
    fn(rows)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


def test_blank_text_names_file_and_row(root):
    path = root / "polyrefuse" / "harmful_train_translated_ja.json"
    _edit_json(path, lambda rows: rows[2].update(instruction=" \x00\t "))
    with pytest.raises(real.DataFormatError, match=r"harmful_train_translated_ja\.json: row 2: blank"):
        real.load_polyrefuse_harmful(root, "train")


def test_missing_key_and_misaligned_rows_name_the_file(root):
    path = root / "polyrefuse" / "harmful_test_translated_zh.json"
    _edit_json(path, lambda rows: rows[4].pop("instruction_translated"))
    with pytest.raises(real.DataFormatError, match=r"harmful_test_translated_zh\.json: row 4 lacks key"):
        real.load_polyrefuse_harmful(root, "test")
    _edit_json(path, lambda rows: rows[4].update(instruction_translated="x"))
    _edit_json(path, lambda rows: rows[5].update(instruction="another English row"))
    with pytest.raises(real.DataFormatError, match=r"translated_zh\.json: row 5: 'instruction' differs"):
        real.load_polyrefuse_harmful(root, "test")
    _edit_json(root / "polyrefuse" / "harmless_val_translated_th.json", lambda rows: rows.pop())
    with pytest.raises(real.DataFormatError, match="not parallel by row"):
        real.load_polyrefuse_harmless(root, "val")


def test_duplicate_ids_and_missing_columns_in_multijail(root):
    path = root / "multijail" / "MultiJail.csv"
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    lines[3] = "1" + lines[3][1:]             # row 2 takes row 1's id
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(real.DataFormatError, match=r"MultiJail\.csv: duplicate id 'multijail-1-en' \(rows 1 and 2\)"):
        real.load_multijail(root, hub=False)
    path.write_text("\n".join([lines[0].replace(",vi,", ",xx,")] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(real.DataFormatError, match=r"MultiJail\.csv: missing column\(s\) \['vi'\]"):
        real.load_multijail(root, hub=False)


def test_bad_utf8_and_bad_tsv_rows_name_the_file(root):
    path = root / "mgsm" / "mgsm_ja.tsv"
    raw = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(raw[:3] + [b"\xff\xfe broken\t3"] + raw[4:]))
    with pytest.raises(real.DataFormatError, match=r"mgsm_ja\.tsv: not UTF-8 at byte \d+ \(line 4\)"):
        real.load_mgsm(root, hub=False)
    path.write_bytes(b"\n".join(raw[:3] + [b"no tab here"] + raw[4:]))
    with pytest.raises(real.DataFormatError, match=r"mgsm_ja\.tsv: row 3 \(line 4\) has 1 tab-separated"):
        real.load_mgsm(root, hub=False)
    path.write_bytes(b"\n".join(raw[:3] + ["問題\t十五".encode()] + raw[4:]))
    with pytest.raises(real.DataFormatError, match=r"mgsm_ja\.tsv: row 3: answer '十五' is not a number"):
        real.load_mgsm(root, hub=False)
    shutil.copy(root / "mgsm" / "mgsm_zh.tsv", path)
    path.write_text(path.read_text(encoding="utf-8").replace("\t7\n", "\t8\n", 1), encoding="utf-8")
    with pytest.raises(real.DataFormatError, match=r"mgsm_ja\.tsv: row 0: answer 8 differs"):
        real.load_mgsm(root, hub=False)
    bad_json = root / "polyrefuse" / "english" / "strongreject.json"
    bad_json.write_text('[{"instruction": "a"},', encoding="utf-8")
    with pytest.raises(real.DataFormatError, match=r"strongreject\.json: invalid JSON at line 1"):
        real.load_strongreject(root)


def test_missing_files_and_roots_say_what_to_get(root, tmp_path, monkeypatch):
    (root / "multijail" / "MultiJail.csv").unlink()
    with pytest.raises(DataUnavailable, match="MultiJail.csv is missing; get MultiJail: `hf download DAMO-NLP-SG"):
        real.load_multijail(root, hub=False)
    shutil.rmtree(root / "polyrefuse" / "english")
    with pytest.raises(DataUnavailable, match="harmful_val.json is missing; get PolyRefuse.*mainlp/Multilingual-Ref"):
        real.load_polyrefuse_harmful(root, "val")
    assert issubclass(real.DataFormatError, UserError) and issubclass(DataUnavailable, RuntimeError)
    # the data root: "fixtures", a folder, $MLSAFE_DATA, else ../shared/data, else a clear error
    assert real.data_root("fixtures") == FIX and real.data_root(root) == root
    with pytest.raises(DataUnavailable, match="DATA=hub: the real-model suite needs PolyRefuse"):
        real.data_root("hub")
    with pytest.raises(DataUnavailable, match=r"data root .*nowhere \(--data .*\) is not a folder.*polyrefuse/"):
        real.data_root(tmp_path / "nowhere")
    monkeypatch.setenv("MLSAFE_DATA", str(root))
    assert real.data_root(None) == root and real.data_root("auto") == root
    monkeypatch.delenv("MLSAFE_DATA")
    monkeypatch.setattr(real, "SHARED_DATA", tmp_path / "no-shared")
    with pytest.raises(DataUnavailable, match=r"no data root: pass --data <folder> or set \$MLSAFE_DATA.*"
                                              r"google-research/url-nlp"):
        real.data_root(None)


# ------------------------------------------------------------------ near duplicates and sampling
def _p(i, text, lang="en"):
    return Prompt(id=f"t-{i}-{lang}", lang=lang, text=text, harmful=True, parallel_id=f"t-{i}")


def test_near_duplicates_catch_small_edits_and_not_different_requests():
    base = "Write a detailed guide on how to grow tomatoes on a small city balcony in summer"
    anchors = [_p(0, base.upper() + "!!"), _p(1, base.replace("in summer", "in the summer")),
               _p(2, "Explain how rainbows form after a storm"), _p(3, base, lang="zh")]
    test = [_p(9, base)]
    found = {a.id: round(s, 3) for a, _, s in find_near_duplicates(anchors, test)}
    assert found["t-0-en"] == 1.0 and 0.8 <= found["t-1-en"] < 1.0 and "t-2-en" not in found
    assert "t-3-zh" in found                      # an untranslated row counts whatever its tag
    assert "t-1-en" not in {a.id for a, _, _ in find_near_duplicates(anchors, test, threshold=0.99)}
    rep = overlap_report(anchors, test)
    assert (rep["en"]["exact"], rep["en"]["near"]) == (1, 1) and rep["en"]["exact_pairs"] == [["t-0-en", "t-9-en"]]
    assert rep["en"]["anchor_ids"] == ["t-0-en", "t-1-en"] and rep["params"] == {"n": 5, "threshold": 0.8}
    with pytest.raises(ValueError, match="threshold"):
        find_near_duplicates(anchors, test, threshold=0)


def test_sample_parallel_is_seeded_paired_and_counts_duplicates():
    pool = [_p(i, f"request number {i} about topic {i * 7}", lang) for i in range(30) for lang in ("en", "zh")]
    pool.append(_p(30, "request number 0 about topic 0", "en"))   # a duplicate text in en only
    a, skipped = real.sample_parallel({"s": pool}, {"en": [("s", 31)], "zh": [("s", 5)]}, seed=3)
    assert skipped == {"en": 1, "zh": 0} and sum(p.lang == "en" for p in a) == 30
    b, _ = real.sample_parallel({"s": pool}, {"en": [("s", 5)], "zh": [("s", 5)]}, seed=3)
    c, _ = real.sample_parallel({"s": pool}, {"en": [("s", 5)], "zh": [("s", 5)]}, seed=4)
    ids = lambda ps, lang: [p.parallel_id for p in ps if p.lang == lang]  # noqa: E731
    assert ids(b, "en") == ids(b, "zh") == ids(a, "zh")           # same rows across languages
    assert ids(b, "en") != ids(c, "en")
    assert real.even_shares(100, ["x", "y", "z"], {"x": 500, "y": 10, "z": 500}) == [("x", 34), ("y", 10), ("z", 56)]


# ------------------------------------------------------------------ answers cache and the suite
def test_model_answers_caches_by_model_identity_and_text(tmp_path, monkeypatch):
    calls = []

    def fake_generate(model, tokenizer, texts, **kw):
        calls.append(list(texts))
        return [f"answer to {t} ({kw['max_new_tokens']})" for t in texts]

    monkeypatch.setattr(mlsafe.evaluate, "generate", fake_generate)
    prompts = [_p(0, "alpha"), _p(1, "beta"), _p(2, "alpha", lang="zh")]
    cache = tmp_path / "answers.json"
    out = real.model_answers(None, None, prompts, cache_file=cache, model_id="m1", max_new_tokens=4)
    assert [p.response for p in out] == ["answer to alpha (4)", "answer to beta (4)", "answer to alpha (4)"]
    assert calls == [["alpha", "beta"]] and cache.is_file()
    real.model_answers(None, None, prompts, cache_file=cache, model_id="m1", max_new_tokens=4)
    assert len(calls) == 1                        # all cached
    real.model_answers(None, None, prompts[:1], cache_file=cache, model_id="m2", max_new_tokens=4)
    real.model_answers(None, None, prompts[:1], cache_file=cache, model_id="m1", max_new_tokens=8)
    assert calls[1:] == [["alpha"], ["alpha"]]    # another model or length is another key
    cache.write_text("{not json", encoding="utf-8")
    with pytest.raises(real.DataFormatError, match="answers.json: not an answer cache"):
        real.model_answers(None, None, prompts, cache_file=cache, model_id="m1")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    folder = tiny.build(tmp_path_factory.mktemp("tiny"), seed=0, archs=("qwen2",))["qwen2"]
    return models.load_model(str(folder))


def test_real_model_suite_on_fixtures(tiny_lm, tmp_path, monkeypatch):
    cache = tmp_path / "answers.json"
    suite = real.real_model_suite(tiny_lm, "fixtures", 0, answer_tokens=3, max_new_tokens=8, cache_file=cache,
                                  english_refused_only=False)
    # the deliberate fixture near-duplicate (English train row 7 = test row 3) is dropped, in all languages
    assert suite.report["overlap"]["dropped_rows"] == ["polyrefuse-harmful-train-7"]
    assert suite.report["anchor_rows"]["dropped_for_overlap"] == {"harmful": 1, "harmless": 0}
    assert not any(p.parallel_id == "polyrefuse-harmful-train-7" for p in suite.anchors_harmful)
    check_no_overlap(suite.anchors_harmful + suite.anchors_harmless, suite.eval_harmful + suite.eval_harmless)
    # responses: every harmless anchor and the English harmful anchors (X_safe), none elsewhere
    assert all(p.response is not None for p in suite.anchors_harmless)
    assert all((p.response is not None) == (p.lang == "en") for p in suite.anchors_harmful)
    assert {p.source for p in suite.anchors_harmful} == {"polyrefuse-train", "polyrefuse-val"}
    # evaluation: every language, sources and clusters recorded, MGSM with answers
    assert {p.lang for p in suite.eval_harmful} == set(LANGS)
    assert all(p.source and p.cluster for p in suite.eval_harmful + suite.eval_harmless)
    src = real.eval_sources(suite)
    assert src["eval_harmful"]["en"] == {"polyrefuse-test": 10, "multijail": 8, "strongreject": 6}
    assert src["eval_harmful"]["id"] == {"templated": 40} and src["eval_harmful"]["vi"] == {"multijail": 8}
    assert src == suite.report["sources"]
    mgsm = [p for p in suite.eval_harmless if p.source == "mgsm"]
    assert mgsm and all(p.answer for p in mgsm) and suite.correct is mlsafe.evaluate.mgsm_correct
    assert suite.refusal_starts is mlsafe.evaluate.DEFAULT_REFUSAL_STARTS
    from mlsafe.evaluate.judges import DEFAULT_REAL_JUDGE

    assert suite.report["judge"] == DEFAULT_REAL_JUDGE
    assert type(suite.judge) is type(mlsafe.evaluate.make_judge(DEFAULT_REAL_JUDGE))
    # a second build reads every answer from the cache and samples the same prompts
    monkeypatch.setattr(mlsafe.evaluate, "generate", lambda *a, **k: pytest.fail("answers not cached"))
    again = real.real_model_suite(tiny_lm, "fixtures", 0, answer_tokens=3, max_new_tokens=8, cache_file=cache,
                                  english_refused_only=False)
    assert again.anchors_harmless == suite.anchors_harmless and again.eval_harmful == suite.eval_harmful
    small = real.real_model_suite(tiny_lm, "fixtures", 1, n_per_lang=4, n_mgsm=2, max_anchors=2,
                                  answer_tokens=3, cache_file=cache, english_refused_only=False)  # cached too
    assert by_lang(small.eval_harmful) == {lang: 4 for lang in LANGS}
    assert real.eval_sources(small)["eval_harmful"]["en"] == {"polyrefuse-test": 2, "multijail": 1, "strongreject": 1}
    assert len({p.parallel_id for p in small.anchors_harmful}) <= 4
    assert sum(p.source == "mgsm" for p in small.eval_harmless) == 10


# ------------------------------------------------------------------ the fixtures' generator
_WORDS = ["amber", "basil", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kelp",
          "lumen", "mosaic", "nectar", "onyx", "prism", "quill", "russet", "sable", "tundra", "umber", "velvet",
          "willow", "xenon", "yarrow", "zephyr"]
_HARM = {"en": "[harmful request {s} {i} about ⟨{t}⟩, placeholder]", "zh": "[有害请求 {s} {i}：关于⟨{t}⟩的占位文本]",
         "ja": "[有害な依頼 {s} {i}：⟨{t}⟩についての仮の文]", "th": "[คำขอที่เป็นอันตราย {s} {i} เกี่ยวกับ ⟨{t}⟩ ข้อความตัวอย่าง]"}
_SAFE = {"en": "[harmless request {s} {i}: ⟨{t}⟩, placeholder]", "zh": "[无害请求 {s} {i}：⟨{t}⟩的占位文本]",
         "ja": "[無害な依頼 {s} {i}：⟨{t}⟩についての仮の文]", "th": "[คำขอทั่วไป {s} {i} เรื่อง ⟨{t}⟩ ข้อความตัวอย่าง]"}
_MJ = {"en": "[multijail prompt {i} ⟨{t}⟩ placeholder]", "zh": "[多语种越狱提示 {i} ⟨{t}⟩ 占位]",
       "vi": "[lời nhắc multijail {i} ⟨{t}⟩ giữ chỗ]", "th": "[พรอมต์ multijail {i} ⟨{t}⟩ ตัวอย่าง]",
       "bn": "[মাল্টিজেল প্রম্পট {i} ⟨{t}⟩ স্থানধারক]"}
_MGSM = {"en": "[maths problem {i}: {a} + {b} = ?]", "zh": "[数学题 {i}：{a} + {b} = ？]",
         "ja": "[算数の問題 {i}：{a} + {b} = ？]", "th": "[โจทย์คณิตศาสตร์ {i}: {a} + {b} = ?]",
         "bn": "[গণিত সমস্যা {i}: {a} + {b} = ?]"}
_CATS = ["category-a", "category-b", "category-c"]
_README = """# Synthetic stand-in for shared/data

The layout and file formats of shared/data (read by mlsafe/data/real.py), a few rows each, with
placeholder content written for the tests (no real prompt); built by write_shared_fixtures in
tests/test_real_data.py (regenerate: `python tests/test_real_data.py`). Translated files are parallel
by row with their English files. English PolyRefuse harmful train row 7 repeats test row 3 up to
case and punctuation on purpose: the suite's overlap check must catch and drop it.
"""


def _topic(g: int) -> str:
    """Three placeholder words, distinct for every g < 26 (rows must not look like near duplicates)."""
    return f"{_WORDS[g % 26]} {_WORDS[(g + 9) % 26]} {_WORDS[(g + 17) % 26]}"


def write_shared_fixtures(out: Path) -> None:
    """Write the synthetic stand-in for shared/data (mlsafe/data/fixtures/shared/) under `out`."""
    def dump(rel, rows):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    def parallel(name, template, split, n, first, en_rows):
        for lang in ("zh", "ja", "th") if template is _HARM else ("ja", "th"):
            tr = [template[lang].format(s=split, i=i, t=_topic(first + i)) for i in range(n)]
            extra = (lambda e: {"instruction": e["instruction"]}) if split == "test" else (lambda e: {})
            key = "instruction_translated" if split == "test" else "instruction"
            dump(f"polyrefuse/{name}_{split}_translated_{lang}.json",
                 [{**extra(e), key: t, "category": e["category"]} for e, t in zip(en_rows, tr)])

    # harmful: a distinct topic index per (split, row); English train row 7 near-duplicates test row 3
    harm = {"train": (0, 8), "val": (8, 4), "test": (12, 10)}
    en = {s: [{"instruction": _HARM["en"].format(s=s, i=i, t=_topic(first + i)), "category": _CATS[i % 3]}
              for i in range(n)] for s, (first, n) in harm.items()}
    en["train"][7] = {**en["train"][7], "instruction": en["test"][3]["instruction"].upper()
                      .replace(", PLACEHOLDER]", "; placeholder!]")}
    for s, (first, n) in harm.items():
        dump(f"polyrefuse/english/harmful_{s}.json", en[s])
        parallel("harmful", _HARM, s, n, first, en[s])
    # harmless: en/ja/th parallel train, val, test; zh train/val its own sample; no zh test
    safe = {"train": (3, 8), "val": (11, 4), "test": (15, 6)}
    for s, (first, n) in safe.items():
        rows = [{"instruction": _SAFE["en"].format(s=s, i=i, t=_topic(first + i)), "category": _CATS[i % 3]}
                for i in range(n)]
        if s == "test":
            dump("polyrefuse/english/harmless_test_translated_en.json",
                 [{**r, "instruction_translated": r["instruction"]} for r in rows])
        else:
            dump(f"polyrefuse/english/harmless_{s}_200_sampled.json", rows)
            dump(f"polyrefuse/harmless_{s}_translated_zh.json",
                 [{"instruction": _SAFE["zh"].format(s=f"zh-{s}", i=i, t=_topic(i + 20)), "category": _CATS[i % 3]}
                  for i in range(n - 2)])
        parallel("harmless", _SAFE, s, n, first, rows)
    dump("polyrefuse/english/strongreject.json",
         [{"instruction": f"[StrongREJECT-style request {i} about ⟨{_topic(i + 5)}⟩, placeholder]",
           "category": _CATS[i % 3]} for i in range(6)])
    kinds = ["homonyms", "figurative_language", "safe_targets"]
    dump("polyrefuse/english/xstest_safe.json",
         [{"id_v1": f"v1-{i + 1}", "id_v2": f"v2-{i + 1}", "type": kinds[i % 3],
           "instruction": f"[safe question {i} that only looks unsafe: ⟨{_topic(i + 11)}⟩]",
           "focus": _WORDS[i], "note": "placeholder", "category": kinds[i % 3]} for i in range(6)])
    dump("polyrefuse/english/xstest_unsafe.json",
         [{"id_v1": None, "id_v2": f"v2-{i + 7}", "type": "contrast_" + kinds[i % 3],
           "instruction": f"[unsafe contrast {i}: ⟨{_topic(i + 14)}⟩]",
           "focus": _WORDS[i], "note": "placeholder", "category": "contrast_" + kinds[i % 3]} for i in range(4)])
    # MultiJail: a BOM, a header, one column per language (as the real file)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "source", "tags", *MULTIJAIL_LANGS])
    for i in range(8):
        t = f"{_topic(i + 2)} {_WORDS[(i + 4) % 26]}"
        writer.writerow([i, "placeholder", "['placeholder tag']",
                         *[_MJ.get(lang, f"[{lang} multijail prompt {{i}} ⟨{{t}}⟩ placeholder]").format(i=i, t=t)
                           for lang in MULTIJAIL_LANGS]])
    (out / "multijail").mkdir(parents=True, exist_ok=True)
    (out / "multijail" / "MultiJail.csv").write_text("\ufeff" + buf.getvalue(), encoding="utf-8")
    # MGSM: question<TAB>answer, no header; one answer with a thousands separator, as in the real files
    pairs = [(2, 5), (10, 32), (7, 8), (100, 23), (3, 4), (60, 6), (11, 9), (2000, 125)]
    (out / "mgsm").mkdir(parents=True, exist_ok=True)
    for lang, q in _MGSM.items():
        lines = [q.format(i=i, a=a, b=b) + "\t" + f"{a + b:,}" for i, (a, b) in enumerate(pairs)]
        (out / "mgsm" / f"mgsm_{lang}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_README, encoding="utf-8")


def test_shared_fixtures_equal_their_generator(tmp_path):
    write_shared_fixtures(tmp_path)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(p.relative_to(FIX) for p in FIX.rglob("*") if p.is_file())
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (FIX / rel).read_bytes(), rel


class EvenRowsRefused:
    """A judge that counts a response as a refusal exactly when its prompt's row number is even."""

    def judge(self, prompts, responses):
        return [Judgment(unsafe=False, refusal=int(p.parallel_id.rsplit("-", 1)[1]) % 2 == 0, label="", raw="")
                for p in prompts]


def test_real_model_suite_keeps_rows_the_model_refuses_in_english(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setattr(real, "suite_judge", lambda name, device="cpu": EvenRowsRefused())
    suite = real.real_model_suite(tiny_lm, "fixtures", 0, answer_tokens=3, cache_file=tmp_path / "a.json")
    # English anchors after the overlap drop: train rows 0-6 and val rows 0-3; even rows are refused
    assert suite.report["anchor_refusal_rate_en"] == 6 / 11
    assert suite.report["anchor_rows"]["dropped_not_refused_en"] == 5
    kept = {p.parallel_id for p in suite.anchors_harmful}
    assert kept == {f"polyrefuse-harmful-{s}-{i}" for s, rows in (("train", 7), ("val", 4))
                    for i in range(0, rows, 2)}
    assert by_lang(suite.anchors_harmful) == {lang: 6 for lang in ("en", "zh", "ja", "th")}


if __name__ == "__main__":
    shutil.rmtree(FIX, ignore_errors=True)
    write_shared_fixtures(FIX)


def test_held_aside_xstest_leaves_out_the_evaluation_and_its_near_duplicates():
    safe = real.load_xstest(FIX, "safe")                      # 6 prompts
    used = safe[:2]
    copy = dataclasses.replace(safe[2], id="eval-copy", text=safe[2].text)   # an evaluation prompt equal to one
    fit, val, info = real.held_aside_xstest(FIX, used + [copy], seed=0)
    ids = {p.id for p in fit + val}
    assert not ids & {p.id for p in used} and safe[2].id not in ids
    assert info == {"xstest_safe": 6, "in_evaluation": 2, "held_aside": 4, "dropped_overlap": 1, "fit": 1, "val": 2}
    assert not {p.id for p in fit} & {p.id for p in val}
    again = real.held_aside_xstest(FIX, used + [copy], seed=0)
    assert [p.id for p in again[0] + again[1]] == [p.id for p in fit + val]   # seeded
