"""The real evaluation data in a data root (MultiJail, PolyRefuse with StrongREJECT and XSTest,
MGSM), and the anchors + evaluation sets for a real instruct model (Sec. 5).

Data root (`data_root`): `--data <folder>`, else $MLSAFE_DATA, else ../shared/data beside the
repository; "fixtures" is the bundled synthetic copy (mlsafe/data/fixtures/shared/, same
layout and formats, placeholder content). Layout:

    polyrefuse/{harmful,harmless}_{train,val,test}_translated_{zh,ja,th}.json   (no zh harmless test)
    polyrefuse/english/harmful_{train,val,test}.json, harmless_{train,val}_200_sampled.json,
        harmless_test_translated_en.json, strongreject.json, xstest_{safe,unsafe}.json
    multijail/MultiJail.csv        columns id, source, tags, en, zh, it, vi, ar, ko, th, bn, sw, jv
    mgsm/mgsm_<lang>.tsv           question<TAB>answer, no header

Ids follow mlsafe.data.loaders: parallel_id = "<key>-<row>" (the same across translations),
id = "<parallel_id>-<lang>". Every prompt carries `source` (the data set and split) and
`cluster` (= parallel_id: the source prompt, so that languages pair; StrongREJECT's
category is not a cluster, each prompt is its own).

Validation: a missing file raises DataUnavailable naming it and where to get it; a blank text,
duplicate id, missing column/key, undecodable byte, bad JSON/CSV/TSV row or broken row
alignment raises DataFormatError naming the file and the row. Texts lose C0/C1 control
characters other than tab and newline (invisible, e.g. the CR of CRLF) and surrounding
whitespace; format characters (zero-width joiners and spaces, bidi marks) are kept, since
they change how Bengali, Thai and Hebrew text renders, so removing them is not lossless.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from mlsafe.data.loaders import DATA_ENV, FIXTURES_DIR, MGSM_LANGS, MULTIJAIL_LANGS, DataUnavailable, load_table
from mlsafe.data.overlap import check_no_overlap, normalise_prompt, overlap_report
from mlsafe.errors import UserError
from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt

from mlsafe.suites import Suite

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_FIXTURES = FIXTURES_DIR / "shared"

POLYREFUSE_HINT = ("PolyRefuse: the PolyRefuse/*.json files and the dataset/ English splits of the GitHub "
                   "repository mainlp/Multilingual-Refusal, in <root>/polyrefuse/ and <root>/polyrefuse/english/")
MULTIJAIL_HINT = ("MultiJail: `hf download DAMO-NLP-SG/MultiJail --repo-type dataset --local-dir "
                  "<root>/multijail` (MultiJail.csv)")
MGSM_HINT = "MGSM: mgsm/mgsm_<lang>.tsv of the GitHub repository google-research/url-nlp"
LAYOUT = ("a data root holds polyrefuse/ (" + POLYREFUSE_HINT + "), multijail/MultiJail.csv (" + MULTIJAIL_HINT
          + ") and mgsm/mgsm_<lang>.tsv (" + MGSM_HINT + "); or use --data fixtures")

SPLITS = ("train", "val", "test")
#: PolyRefuse's languages (English plus its three translations).
POLYREFUSE_LANGS = ("en", "zh", "ja", "th")
#: Rows per PolyRefuse harmful split, as shared/data/README.md states (the tests assert them).
POLYREFUSE_HARMFUL_ROWS = {"train": 260, "val": 39, "test": 572}

#: lm-eval-harness mgsm_direct's question word per language; the prompt then asks for the answer.
MGSM_QUESTION = {"en": "Question", "zh": "问题", "ja": "問題", "th": "โจทย์", "bn": "প্রশ্ন"}
MGSM_DIRECT_INSTRUCTION = "Answer with the final number only."

#: The evaluation sources per language for harmful prompts (shares split evenly, in order).
EVAL_HARMFUL_PLAN: dict[str, tuple[str, ...]] = {
    "en": ("polyrefuse-test", "multijail", "strongreject"),
    "zh": ("polyrefuse-test", "multijail"),
    "vi": ("multijail",),
    "ja": ("polyrefuse-test",),
    "th": ("polyrefuse-test", "multijail"),
    "id": ("templated",),
    "bn": ("multijail",),
    "he": ("templated",),
}


class DataFormatError(DataUnavailable):
    """A data file exists but is malformed; the message names the file and the row."""


# ------------------------------------------------------------------ data root
def data_root(data: str | os.PathLike | None = None) -> Path:
    """The data root: "fixtures" (the bundled synthetic copy), a folder, or (None / "auto")
    $MLSAFE_DATA, else ../shared/data beside the repository when it exists. "hub" is refused:
    PolyRefuse has no hub copy (MultiJail and MGSM fall back to the hub when a root lacks them)."""
    if data == "fixtures":
        return SHARED_FIXTURES
    if data == "hub":
        raise DataUnavailable(f"DATA=hub: the real-model suite needs PolyRefuse, which is not on the hub; "
                              f"pass --data <folder> or set ${DATA_ENV}; {LAYOUT}")
    if data not in (None, "", "auto"):
        root, how = Path(data), f"--data {data}"
    elif os.environ.get(DATA_ENV):
        root, how = Path(os.environ[DATA_ENV]), f"${DATA_ENV}={os.environ[DATA_ENV]}"
    elif SHARED_DATA.is_dir():
        return SHARED_DATA
    else:
        raise DataUnavailable(f"no data root: pass --data <folder> or set ${DATA_ENV} "
                              f"({SHARED_DATA} does not exist); {LAYOUT}")
    if not root.is_dir():
        raise DataUnavailable(f"data root {root} ({how}) is not a folder; {LAYOUT}")
    return root


# ------------------------------------------------------------------ reading and validation
_CONTROL = {c: None for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t\n"}


def clean_text(text: str) -> str:
    """The text without C0/C1 control characters (tab and newline kept) and surrounding
    whitespace; format characters (ZWJ, ZWNJ, ZWSP, bidi marks) are kept."""
    return text.translate(_CONTROL).strip()


def _missing(path: Path, hint: str) -> DataUnavailable:
    return DataUnavailable(f"{path} is missing; get {hint}")


def _decode(path: Path, hint: str) -> str:
    if not path.is_file():
        raise _missing(path, hint)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataFormatError(f"{path}: not UTF-8 at byte {err.start} (line {line}): {err.reason}") from err


def _text(path: Path, row: int, value, what: str) -> str:
    if not isinstance(value, str):
        raise DataFormatError(f"{path}: row {row}: {what} is {type(value).__name__}, not text")
    text = clean_text(value)
    if not text:
        raise DataFormatError(f"{path}: row {row}: blank {what}")
    return text


def read_json_rows(path: Path, keys: Sequence[str], hint: str) -> list[dict]:
    """A JSON list of objects, each with `keys` (checked); DataFormatError names file and row."""
    try:
        data = json.loads(_decode(path, hint))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}: row {i} is {type(row).__name__}, not an object")
        missing = [k for k in keys if k not in row]
        if missing:
            raise DataFormatError(f"{path}: row {i} lacks key(s) {missing} (has {sorted(row)})")
    return data


def read_csv_rows(path: Path, columns: Sequence[str], hint: str) -> list[dict]:
    """CSV rows (header line first, UTF-8 with or without BOM) with `columns` (checked)."""
    reader = csv.DictReader(io.StringIO(_decode(path, hint), newline=""))
    try:
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {missing} (has {header})")
        rows = []
        for i, row in enumerate(reader):
            if None in row or any(v is None for v in row.values()):
                raise DataFormatError(f"{path}: row {i} (line {reader.line_num}) has {len(row) - (None in row)} "
                                      f"fields, the header {len(header)}")
            rows.append(row)
    except csv.Error as err:
        raise DataFormatError(f"{path}: bad CSV at line {reader.line_num}: {err}") from err
    return rows


def read_tsv_pairs(path: Path, hint: str) -> list[tuple[str, str]]:
    """`question<TAB>answer` lines without header (a final newline allowed)."""
    lines = _decode(path, hint).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 2:
            raise DataFormatError(f"{path}: row {i} (line {i + 1}) has {len(parts)} tab-separated fields, "
                                  "expected 2 (question, answer)")
        out.append((parts[0], parts[1]))
    return out


def check_unique_ids(prompts: Sequence[Prompt], where: str) -> None:
    """Raise DataFormatError naming `where` and the rows if two prompts share an id."""
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p.id in seen:
            raise DataFormatError(f"{where}: duplicate id {p.id!r} (rows {seen[p.id]} and {i})")
        seen[p.id] = i


def _prompt(key: str, row, lang: str, text: str, *, harmful: bool, source: str,
            answer: str | None = None) -> Prompt:
    pid = f"{key}-{row}"
    return Prompt(id=f"{pid}-{lang}", lang=lang, text=text, harmful=harmful, parallel_id=pid,
                  answer=answer, source=source, cluster=pid)


def _check_langs(langs: Iterable[str], allowed: Sequence[str], what: str) -> list[str]:
    langs = list(langs)
    bad = [lang for lang in langs if lang not in allowed]
    if bad:
        raise ValueError(f"{what} has no languages {bad}; it has {tuple(allowed)}")
    return langs


# ------------------------------------------------------------------ PolyRefuse
def _polyrefuse(root: Path) -> Path:
    return Path(root) / "polyrefuse"


def _aligned(path: Path, rows: list[dict], en_path: Path, en_rows: list[dict], en_texts: list[str] | None) -> None:
    """Row alignment of a translated file with its English file: same count, same category
    where both have one, and (test files) `instruction` equal to the English text."""
    if len(rows) != len(en_rows):
        raise DataFormatError(f"{path}: {len(rows)} rows, but {en_path} has {len(en_rows)}: not parallel by row")
    for i, (r, e) in enumerate(zip(rows, en_rows)):
        if "category" in r and "category" in e and r["category"] != e["category"]:
            raise DataFormatError(f"{path}: row {i}: category {r['category']!r} differs from {en_path} "
                                  f"row {i} ({e['category']!r}): not parallel by row")
        if en_texts is not None and _text(path, i, r["instruction"], "'instruction'") != en_texts[i]:
            raise DataFormatError(f"{path}: row {i}: 'instruction' differs from {en_path} row {i}: "
                                  "not parallel by row")


def load_polyrefuse_harmful(root: Path, split: str, langs: Sequence[str] = POLYREFUSE_LANGS) -> list[Prompt]:
    """PolyRefuse harmful requests of one split, parallel by row with english/harmful_<split>.json
    (checked: row count, category, and for test files the English `instruction`).
    source "polyrefuse-<split>", parallel_id "polyrefuse-harmful-<split>-<row>"."""
    if split not in SPLITS:
        raise ValueError(f"unknown PolyRefuse split {split!r}; use one of {SPLITS}")
    langs = _check_langs(langs, POLYREFUSE_LANGS, "PolyRefuse")
    folder = _polyrefuse(root)
    en_path = folder / "english" / f"harmful_{split}.json"
    en_rows = read_json_rows(en_path, ["instruction"], POLYREFUSE_HINT)
    en_texts = [_text(en_path, i, r["instruction"], "'instruction'") for i, r in enumerate(en_rows)]
    key, source = f"polyrefuse-harmful-{split}", f"polyrefuse-{split}"
    out = [_prompt(key, i, "en", t, harmful=True, source=source) for i, t in enumerate(en_texts)] \
        if "en" in langs else []
    text_key = "instruction_translated" if split == "test" else "instruction"
    for lang in langs:
        if lang == "en":
            continue
        path = folder / f"harmful_{split}_translated_{lang}.json"
        rows = read_json_rows(path, ["instruction", text_key], POLYREFUSE_HINT)
        _aligned(path, rows, en_path, en_rows, en_texts if split == "test" else None)
        out += [_prompt(key, i, lang, _text(path, i, r[text_key], repr(text_key)), harmful=True, source=source)
                for i, r in enumerate(rows)]
    check_unique_ids(out, str(folder))
    return out


def load_polyrefuse_harmless(root: Path, split: str, langs: Sequence[str] | None = None) -> list[Prompt]:
    """PolyRefuse harmless requests of one split. train/val: en, ja, th parallel by row with
    english/harmless_<split>_200_sampled.json (checked), zh a different sample with its own
    parallel_ids ("polyrefuse-harmless-<split>-zh-<row>"); test: en (harmless_test_translated_en.json),
    ja, th parallel (checked: `instruction` equals the English row); there is no zh test file.
    source "polyrefuse-harmless-<split>". Default langs: all the split has."""
    if split not in SPLITS:
        raise ValueError(f"unknown PolyRefuse split {split!r}; use one of {SPLITS}")
    have = ("en", "ja", "th") if split == "test" else POLYREFUSE_LANGS
    langs = _check_langs(have if langs is None else langs, have, f"PolyRefuse harmless {split}")
    folder = _polyrefuse(root)
    en_name = "harmless_test_translated_en.json" if split == "test" else f"harmless_{split}_200_sampled.json"
    en_path = folder / "english" / en_name
    key, source = f"polyrefuse-harmless-{split}", f"polyrefuse-harmless-{split}"
    out: list[Prompt] = []
    en_rows = en_texts = None
    if any(lang in ("en", "ja", "th") for lang in langs):
        en_rows = read_json_rows(en_path, ["instruction"], POLYREFUSE_HINT)
        en_texts = [_text(en_path, i, r["instruction"], "'instruction'") for i, r in enumerate(en_rows)]
    text_key = "instruction_translated" if split == "test" else "instruction"
    for lang in langs:
        if lang == "en":
            out += [_prompt(key, i, "en", t, harmful=False, source=source) for i, t in enumerate(en_texts)]
            continue
        path = folder / f"harmless_{split}_translated_{lang}.json"
        rows = read_json_rows(path, ["instruction", text_key], POLYREFUSE_HINT)
        k = key
        if lang == "zh":
            k = f"{key}-zh"                       # not parallel with English: own parallel_ids
        else:
            _aligned(path, rows, en_path, en_rows, en_texts if split == "test" else None)
        out += [_prompt(k, i, lang, _text(path, i, r[text_key], repr(text_key)), harmful=False, source=source)
                for i, r in enumerate(rows)]
    check_unique_ids(out, str(folder))
    return out


def _english_file(root: Path, name: str, key: str, *, harmful: bool, source: str) -> list[Prompt]:
    path = _polyrefuse(root) / "english" / name
    rows = read_json_rows(path, ["instruction"], POLYREFUSE_HINT)
    out = [_prompt(key, i, "en", _text(path, i, r["instruction"], "'instruction'"), harmful=harmful, source=source)
           for i, r in enumerate(rows)]
    check_unique_ids(out, str(path))
    return out


def load_strongreject(root: Path) -> list[Prompt]:
    """StrongREJECT's 313 English harmful prompts (polyrefuse/english/strongreject.json);
    each prompt is its own cluster (its category is a topic, not a sampling unit)."""
    return _english_file(root, "strongreject.json", "strongreject", harmful=True, source="strongreject")


def load_xstest(root: Path, which: str = "safe") -> list[Prompt]:
    """XSTest, English: "safe" (250 prompts that only look unsafe; harmful=False, the
    over-refusal test) or "unsafe" (their 200 unsafe contrasts; harmful=True)."""
    if which not in ("safe", "unsafe"):
        raise ValueError(f"XSTest has 'safe' and 'unsafe' prompts, not {which!r}")
    return _english_file(root, f"xstest_{which}.json", f"xstest-{which}", harmful=which == "unsafe",
                         source=f"xstest-{which}")


# ------------------------------------------------------------------ MultiJail
def load_multijail(root: Path, langs: Sequence[str] | None = None, *, hub: bool = True) -> list[Prompt]:
    """MultiJail (315 harmful prompts, parallel across its language columns) from
    <root>/multijail/MultiJail.csv, else (hub=True) from the hub (DAMO-NLP-SG/MultiJail at the
    pinned revision). Default langs: the paper's languages it has (en, zh, vi, th, bn); any of
    MULTIJAIL_LANGS can be asked for. parallel_id "multijail-<id column>"."""
    langs = _check_langs([lang for lang in MULTIJAIL_LANGS if lang in LANGS] if langs is None else langs,
                         MULTIJAIL_LANGS, "MultiJail")
    path = Path(root) / "multijail" / "MultiJail.csv"
    if path.is_file() or not hub:
        rows, where = read_csv_rows(path, ["id", *langs], MULTIJAIL_HINT), path
    else:
        try:
            df = load_table("multijail", "hub")
        except DataUnavailable as err:
            raise DataUnavailable(f"{path} is missing and the hub copy failed ({str(err).splitlines()[0]}); "
                                  f"get {MULTIJAIL_HINT}") from err
        where = Path("hub:DAMO-NLP-SG/MultiJail")
        missing = [c for c in ["id", *langs] if c not in df.columns]
        if missing:
            raise DataFormatError(f"{where}: missing column(s) {missing} (has {list(df.columns)})")
        rows = df.astype(str).to_dict("records")
    ids = [_text(where, i, str(r["id"]), "'id'") for i, r in enumerate(rows)]
    out = [_prompt("multijail", rid, lang, _text(where, i, r[lang], repr(lang)), harmful=True, source="multijail")
           for lang in langs for i, (rid, r) in enumerate(zip(ids, rows))]
    check_unique_ids(out, str(where))
    return out


# ------------------------------------------------------------------ MGSM
def mgsm_direct_text(lang: str, question: str) -> str:
    """The direct-answer user message of lm-eval-harness mgsm_direct ("<Question>: q\\nAnswer:",
    question word in the language), with a line asking for the final number only."""
    return f"{MGSM_QUESTION[lang]}: {question}\n{MGSM_DIRECT_INSTRUCTION}\nAnswer:"


def load_mgsm(root: Path, langs: Sequence[str] = MGSM_LANGS, *, hub: bool = True) -> list[Prompt]:
    """MGSM's 250 problems per language from <root>/mgsm/mgsm_<lang>.tsv, else (hub=True) the hub
    (juletxara/mgsm). text: mgsm_direct_text; answer: the answer number, canonical
    (mlsafe.evaluate.utility.canonical_number: "2,125" -> "2125"; mgsm_correct compares the
    response's last number with it). Rows are checked parallel: equal answers across languages."""
    from mlsafe.evaluate.utility import canonical_number

    langs = _check_langs(langs, MGSM_LANGS, "MGSM")
    out: list[Prompt] = []
    answers: dict[str, tuple[Path, list[str]]] = {}
    for lang in langs:
        path = Path(root) / "mgsm" / f"mgsm_{lang}.tsv"
        if path.is_file() or not hub:
            pairs, where = read_tsv_pairs(path, MGSM_HINT), path
        else:
            try:
                df = load_table("mgsm", "hub", config=lang, split="test")
            except DataUnavailable as err:
                raise DataUnavailable(f"{path} is missing and the hub copy failed "
                                      f"({str(err).splitlines()[0]}); get {MGSM_HINT}") from err
            where = Path(f"hub:juletxara/mgsm/{lang}")
            pairs = list(zip(df["question"], df["answer_number"].astype(str)))
        got = []
        for i, (q, a) in enumerate(pairs):
            ans = canonical_number(clean_text(a))
            if ans is None:
                raise DataFormatError(f"{where}: row {i}: answer {a!r} is not a number")
            got.append(ans)
            out.append(_prompt("mgsm", i, lang, mgsm_direct_text(lang, _text(where, i, q, "question")),
                               harmful=False, source="mgsm", answer=ans))
        answers[lang] = (where, got)
    if answers:
        ref_path, ref = next(iter(answers.values()))
        for where, got in answers.values():
            if len(got) != len(ref):
                raise DataFormatError(f"{where}: {len(got)} rows, but {ref_path} has {len(ref)}: not parallel by row")
            bad = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
            if bad is not None:
                raise DataFormatError(f"{where}: row {bad}: answer {got[bad]} differs from {ref_path} "
                                      f"({ref[bad]}): not parallel by row")
    check_unique_ids(out, str(Path(root) / "mgsm"))
    return out


# ------------------------------------------------------------------ templated prompts
def load_templated(langs: Sequence[str], *, harmful: bool = True) -> list[Prompt]:
    """The project's own abstract prompts (mlsafe.gemma.data's held-out split) for languages
    without a real set: harmful template x filler requests (source "templated", cluster = the
    template) or, harmful=False, the near-miss questions that share harmful-looking words
    (source "templated-near-miss", each its own cluster)."""
    from mlsafe.gemma.data import build_split

    langs = _check_langs(langs, LANGS, "the templated prompts")
    out = []
    for p in build_split("eval"):
        if p.lang not in langs or p.harmful != harmful or (not harmful and p.answer is not None):
            continue
        pid = f"templated-{p.parallel_id}"
        cluster = f"templated-{p.parallel_id.rsplit('-', 1)[0]}" if harmful else pid
        out.append(dataclasses.replace(p, id=f"{pid}-{p.lang}", parallel_id=pid, response=None,
                                       source="templated" if harmful else "templated-near-miss", cluster=cluster))
    return out


# ------------------------------------------------------------------ reference responses
def model_answers(model, tokenizer, prompts: Sequence[Prompt], *, cache_file: str | os.PathLike, model_id: str,
                  max_new_tokens: int = 64, batch_size: int = 16, batch_tokens: int | None = None,
                  decode_rows: int | None = None, progress: bool = False) -> list[Prompt]:
    """The prompts with `response` set to the model's own greedy answer (mlsafe.evaluate.generate,
    batched by length with `batch_size`, `batch_tokens` and `decode_rows`).

    Answers are cached in `cache_file` (JSON, written atomically), keyed by sha256 of
    (model_id, max_new_tokens, prompt text); model_id is the caller's identity of the model
    and its chat template (real_model_suite uses `model_identity`). Only missing answers are
    generated. The cache can hold harmful text: keep it out of the repository."""
    from mlsafe.evaluate import generate
    from mlsafe.results import write_atomic

    path = Path(cache_file)
    cache: dict[str, str] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))["answers"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise DataFormatError(f"{path}: not an answer cache ({type(err).__name__}); delete it") from err
    key = lambda text: hashlib.sha256(f"{model_id}\0{max_new_tokens}\0{text}".encode()).hexdigest()  # noqa: E731
    todo = sorted({p.text for p in prompts if key(p.text) not in cache})
    if todo:
        responses = generate(model, tokenizer, todo, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             batch_tokens=batch_tokens, decode_rows=decode_rows, sort_by_length=True,
                             progress=progress)
        cache.update({key(t): r for t, r in zip(todo, responses)})
        write_atomic(path, json.dumps({"answers": cache}, ensure_ascii=False, sort_keys=True) + "\n")
    return [dataclasses.replace(p, response=cache[key(p.text)]) for p in prompts]


def model_identity(model, tokenizer) -> str:
    """The model's fingerprint (mlsafe.edit.fingerprint) and a hash of its chat template."""
    from mlsafe.edit import fingerprint

    template = getattr(tokenizer, "chat_template", None) or ""
    return f"{fingerprint(model)}|{hashlib.sha256(str(template).encode()).hexdigest()[:16]}"


def default_cache_file(name: str) -> Path:
    """<cache>/answers/<name>.json, <cache> = $MLSAFE_CACHE or ~/.cache/mlsafe (the project's
    model cache, mlsafe.packaged.cache_root): outside the repository."""
    base = Path(os.environ.get("MLSAFE_CACHE", Path.home() / ".cache" / "mlsafe"))
    return base / "answers" / f"{name.replace('/', '--')}.json"


# ------------------------------------------------------------------ sampling
def _order(pool: Sequence[Prompt], seed: int, name: str) -> list[str]:
    ids = sorted({p.parallel_id for p in pool})
    random.Random(f"{seed}-{name}").shuffle(ids)
    return ids


def _take(pool: Sequence[Prompt], order: list[str], lang: str, k: int, seen: set[str]) -> tuple[list[Prompt], int]:
    """The first k prompts of `lang` in `order` whose normalised text is not in `seen` (updated);
    returns them and how many were skipped as duplicates."""
    by_pid = {p.parallel_id: p for p in pool if p.lang == lang}
    out, skipped = [], 0
    for pid in order:
        if len(out) == k:
            break
        p = by_pid.get(pid)
        if p is None:
            continue
        norm = normalise_prompt(p.text)
        if norm in seen:
            skipped += 1
            continue
        seen.add(norm)
        out.append(p)
    return out, skipped


def sample_parallel(pools: dict[str, list[Prompt]], plan: dict[str, Sequence[tuple[str, int]]], seed: int
                    ) -> tuple[list[Prompt], dict[str, int]]:
    """Seeded subsample: for each language, k prompts from each (source, k) in its plan.

    Every source is visited in one seeded order of its parallel_ids shared by all languages,
    so the languages get the same rows where they exist (paired comparisons). Prompts whose
    normalised text was already taken in the language are skipped (and counted), never
    silently: the second return value is {lang: number skipped as duplicates}."""
    orders = {src: _order(pool, seed, src) for src, pool in pools.items()}
    out, skipped = [], {}
    for lang, items in plan.items():
        seen: set[str] = set()
        skipped[lang] = 0
        for src, k in items:
            got, s = _take(pools[src], orders[src], lang, k, seen)
            out += got
            skipped[lang] += s
    return out, skipped


def even_shares(n: int, sources: Sequence[str], available: dict[str, int]) -> list[tuple[str, int]]:
    """n split as evenly as possible over the sources, in order; a source with fewer prompts
    than its share gives the rest to the sources after it."""
    out, left = [], n
    for i, src in enumerate(sources):
        k = min(-(-left // (len(sources) - i)), available.get(src, 0))
        out.append((src, k))
        left -= k
    return out


def eval_sources(suite) -> dict:
    """{"eval_harmful" | "eval_harmless" | "anchors_harmful" | "anchors_harmless":
    {lang: {source: count}}} from Prompt.source (None counts as "unrecorded")."""
    def count(prompts):
        out: dict[str, dict[str, int]] = {}
        for p in prompts:
            row = out.setdefault(p.lang, {})
            row[p.source or "unrecorded"] = row.get(p.source or "unrecorded", 0) + 1
        return {lang: out[lang] for lang in sorted(out, key=lambda x: LANGS.index(x) if x in LANGS else len(LANGS))}
    return {name: count(getattr(suite, name))
            for name in ("eval_harmful", "eval_harmless", "anchors_harmful", "anchors_harmless")}


# ------------------------------------------------------------------ the suite
@dataclass
class RealSuite(Suite):
    """A Suite with the record of how it was built (report): sources and counts, duplicates
    skipped, anchor rows dropped for overlapping the evaluation sets, the judge used."""

    report: dict = field(default_factory=dict)


#: Committed files keep at most this many characters of each response to a harmful prompt
#: (enough to audit a refusal opening); the full text stays in the cache.
RESPONSE_CHARS = 80

#: Judges that are models and run on the suite's device.
GUARD_JUDGES = ("qwen3guard", "llamaguard")


def suite_judge(name: str, device: str = "cpu"):
    """mlsafe.evaluate.make_judge(name): "rules" (the multilingual rule judge, the default),
    "rules+clf", "phrase", or a guard model ("qwen3guard", "llamaguard") on `device`."""
    from mlsafe.evaluate import make_judge

    return make_judge(name, device=device) if name in GUARD_JUDGES else make_judge(name)


def eval_pools(root: Path, *, hub: bool = True) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    """Every evaluation prompt by source: ({harmful source: prompts}, {harmless source: prompts})."""
    harmful = {"polyrefuse-test": load_polyrefuse_harmful(root, "test"),
               "multijail": load_multijail(root, hub=hub),
               "strongreject": load_strongreject(root),
               "templated": load_templated([lang for lang, s in EVAL_HARMFUL_PLAN.items() if "templated" in s])}
    harmless = {"xstest-safe": load_xstest(root, "safe"),
                "polyrefuse-harmless-test": load_polyrefuse_harmless(root, "test"),
                "templated-near-miss": load_templated(LANGS, harmful=False),
                "mgsm": load_mgsm(root, hub=hub)}
    return harmful, harmless


def eval_sets(pools: tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]], seed: int, *, n_per_lang: int = 100,
              n_xstest: int = 100, n_harmless_per_lang: int = 50, n_mgsm: int = 20
              ) -> tuple[list[Prompt], list[Prompt], dict]:
    """(eval_harmful, eval_harmless, info): seeded subsamples (sample_parallel) of eval_pools.

    harmful, n_per_lang per language from EVAL_HARMFUL_PLAN (en: PolyRefuse test + MultiJail +
    StrongREJECT; zh, th: PolyRefuse test + MultiJail; ja: PolyRefuse test; vi, bn: MultiJail;
    id, he: the templated prompts, which have 40 per language). harmless: n_xstest XSTest-safe
    (en, over-refusal), n_harmless_per_lang PolyRefuse harmless test rows (en, ja, th), all
    templated near-misses (every language) and n_mgsm MGSM problems (en zh ja th bn, with answers).
    info: duplicates skipped per language and the pool sizes.
    """
    for name, v in (("n_per_lang", n_per_lang), ("n_xstest", n_xstest),
                    ("n_harmless_per_lang", n_harmless_per_lang), ("n_mgsm", n_mgsm)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    harm_pools, safe_pools = pools
    avail = lambda ps, lang: {s: sum(p.lang == lang for p in pool) for s, pool in ps.items()}  # noqa: E731
    harm_plan = {lang: even_shares(n_per_lang, srcs, avail(harm_pools, lang))
                 for lang, srcs in EVAL_HARMFUL_PLAN.items()}
    budget = {"xstest-safe": n_xstest, "polyrefuse-harmless-test": n_harmless_per_lang,
              "templated-near-miss": len(safe_pools["templated-near-miss"]), "mgsm": n_mgsm}
    safe_plan = {lang: [(src, k) for src, k in budget.items() if avail(safe_pools, lang)[src]] for lang in LANGS}
    harmful, skip_h = sample_parallel(harm_pools, harm_plan, seed)
    harmless, skip_s = sample_parallel(safe_pools, safe_plan, seed)
    info = {"duplicates_skipped": {"eval_harmful": skip_h, "eval_harmless": skip_s},
            "pool_sizes": {src: len(pool) for src, pool in {**harm_pools, **safe_pools}.items()}}
    return harmful, harmless, info


def anchor_sets(root: Path, seed: int, *, max_anchors: int | None = None, max_harmless: int | None = None
                ) -> tuple[list[Prompt], list[Prompt]]:
    """(harmful, harmless) anchors: PolyRefuse harmful train + val in en, zh, ja, th (parallel)
    and harmless train + val (en, ja, th parallel; zh its own sample). The val rows are meant
    as the edit's validation split (source "...-val"). max_anchors: a seeded subset of at most
    that many parallel_ids from each of these sources (and from zh harmless, apart);
    max_harmless: the same cap for the harmless sources alone (default: max_anchors)."""
    for name, v in (("max_anchors", max_anchors), ("max_harmless", max_harmless)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {v}")
    harmful = load_polyrefuse_harmful(root, "train") + load_polyrefuse_harmful(root, "val")
    harmless = load_polyrefuse_harmless(root, "train") + load_polyrefuse_harmless(root, "val")
    max_harmless = max_anchors if max_harmless is None else max_harmless

    def cap(prompts, limit):
        groups: dict[str, list[Prompt]] = {}
        for p in prompts:
            groups.setdefault(p.parallel_id.rsplit("-", 1)[0], []).append(p)
        keep = set()
        for name, group in sorted(groups.items()):
            keep.update(_order(group, seed, name)[:limit])
        return [p for p in prompts if p.parallel_id in keep]
    return (harmful if max_anchors is None else cap(harmful, max_anchors),
            harmless if max_harmless is None else cap(harmless, max_harmless))


def held_aside_xstest(root: Path, eval_prompts: Sequence[Prompt], seed: int) -> tuple[list[Prompt], list[Prompt], dict]:
    """(fit, val, info): the XSTest-safe prompts an evaluation does not use (not in `eval_prompts`
    by id, no exact or near 5-gram duplicate of one: drop_overlapping), sorted by id, shuffled
    with `seed` and cut in halves (issue 13's lead 3: near-misses in form that are not evaluated).
    info: counts of the pool, the evaluation's share, what was held aside and dropped, each half."""
    everything = load_xstest(root, "safe")
    used = {p.id for p in eval_prompts}
    pool = [p for p in everything if p.id not in used]
    kept, _ = drop_overlapping(pool, eval_prompts)
    kept = sorted(kept, key=lambda p: p.id)
    random.Random(seed).shuffle(kept)
    half = len(kept) // 2
    info = {"xstest_safe": len(everything), "in_evaluation": len(everything) - len(pool), "held_aside": len(pool),
            "dropped_overlap": len(pool) - len(kept), "fit": half, "val": len(kept) - half}
    return kept[:half], kept[half:], info


def drop_overlapping(anchors: Sequence[Prompt], eval_prompts: Sequence[Prompt], *, n: int = 5,
                     threshold: float = 0.8) -> tuple[list[Prompt], dict]:
    """Anchors without every parallel_id that has an exact or near duplicate (overlap_report)
    of an evaluation prompt in any language, and the report with "dropped_rows" (parallel_ids)."""
    report = overlap_report(anchors, eval_prompts, n=n, threshold=threshold)
    hit_ids = {i for lang, row in report.items() if lang != "params" for i in row["anchor_ids"]}
    bad = sorted({p.parallel_id for p in anchors if p.id in hit_ids})
    report["dropped_rows"] = bad
    return [p for p in anchors if p.parallel_id not in set(bad)], report


@dataclass
class RealData:
    """The prompts of a real-model suite before any model is involved, and how they were built."""

    anchors_harmful: list[Prompt]
    anchors_harmless: list[Prompt]
    eval_harmful: list[Prompt]
    eval_harmless: list[Prompt]
    report: dict


def real_data(data, seed: int, *, n_per_lang: int = 100, n_xstest: int = 100, n_harmless_per_lang: int = 50,
              n_mgsm: int = 20, max_anchors: int | None = None, max_harmless: int | None = None, ngram: int = 5,
              near_threshold: float = 0.8) -> RealData:
    """Evaluation sets (`eval_sets`) and anchors (`anchor_sets`) from the data root `data`, minus
    every anchor row (parallel_id) with an exact or near duplicate (character `ngram`-gram
    Jaccard >= near_threshold) anywhere in the evaluation pools, not only in the sample, so the
    anchors do not depend on n_per_lang. report: sources and counts (eval_sources), duplicates
    skipped, pool sizes, anchor rows loaded and dropped, and the overlap report with
    "dropped_rows"."""
    root = data_root(data)
    pools = eval_pools(root, hub=data != "fixtures")
    eval_harmful, eval_harmless, info = eval_sets(pools, seed, n_per_lang=n_per_lang, n_xstest=n_xstest,
                                                  n_harmless_per_lang=n_harmless_per_lang, n_mgsm=n_mgsm)
    harmful, harmless = anchor_sets(root, seed, max_anchors=max_anchors, max_harmless=max_harmless)
    loaded = {"harmful": len({p.parallel_id for p in harmful}), "harmless": len({p.parallel_id for p in harmless})}
    everything = [p for ps in pools for pool in ps.values() for p in pool]
    kept, overlap = drop_overlapping(harmful + harmless, everything, n=ngram, threshold=near_threshold)
    harmful, harmless = [p for p in kept if p.harmful], [p for p in kept if not p.harmful]
    check_no_overlap(harmful + harmless, eval_harmful + eval_harmless)
    out = RealData(harmful, harmless, eval_harmful, eval_harmless, {})
    dropped = {kind: len({pid for pid in overlap["dropped_rows"] if pid.startswith(f"polyrefuse-{kind}-")})
               for kind in ("harmful", "harmless")}
    out.report = {"data_root": str(root), "seed": seed, "sources": eval_sources(out), **info,
                  "anchor_rows": {"loaded": loaded, "dropped_for_overlap": dropped}, "overlap": overlap}
    return out


def real_edit_defaults(model) -> dict:
    """EditConfig choices for a real model on CPU, where the paper is silent (OPEN): every layer
    but the first and last is a candidate (the decision can sit late: issue 13's patching probe
    found the MLP ceiling of Qwen2.5-Coder-0.5B in layers 18-22), statistics in one pass, and
    layers ranked by the closed-form predicted gap closure with only the top two confirmed by
    validation margins (each margin scoring is a forward pass over the validation anchors)."""
    from mlsafe import arch

    n = arch.n_layers(model)
    return {"candidate_layers": list(range(1, n - 1)) if n > 2 else list(range(n)), "stats_pass": "fused",
            "layer_selection": "predicted", "confirm_top": 2}


def real_model_suite(lm, data, seed: int, device: str = "cpu", *, n_per_lang: int = 100, n_xstest: int = 50,
                     n_harmless_per_lang: int = 25, n_mgsm: int = 20, max_anchors: int | None = 64,
                     max_harmless: int | None = 32, judge: str | None = None, max_new_tokens: int = 32, answer_tokens: int = 32,
                     cache_file: str | os.PathLike | None = None, ngram: int = 5, near_threshold: float = 0.8,
                     english_refused_only: bool = True, batch_size: int = 64, batch_tokens: int | None = 8192,
                     decode_rows: int | None = 256, margin_batch: int = 8, progress: bool = True) -> RealSuite:
    """The Suite for a real instruct model (e.g. Qwen2.5-Coder-0.5B-Instruct) on the real data.

    Prompts: `real_data` (evaluation sets, anchors without the rows that overlap evaluation).
    Harmless anchors and English harmful anchors get the model's own greedy answers as
    reference responses (`model_answers`, answer_tokens long, cached in cache_file, default
    default_cache_file): the paper's X_safe holds whole conversations, and the English harmful
    conversation is the model's own refusal. The edit maps target-language activations onto the
    English ones, which only helps where the model refuses in English: with english_refused_only
    the harmful anchor rows whose English answer the judge does not count as a refusal are
    dropped (all languages; report["anchor_refusal_rate_en"] and
    report["anchor_rows"]["dropped_not_refused_en"] record it). Judge: `suite_judge(judge)`; margin strings:
    mlsafe.evaluate's DEFAULT_REFUSAL_STARTS / DEFAULT_COMPLY_STARTS; utility: mgsm_correct
    (last number). All data is read and checked before any generation. Batching (measured on
    qwen2.5-coder-0.5b, 2 cores): generation prefills `batch_size` rows within `batch_tokens`
    and decodes up to `decode_rows` together; margin passes read `margin_batch` rows (8: 44.6 s
    over 320 target prompts, against 51.7 s at 16 and 91.4 s at 64)."""
    from mlsafe import evaluate as ev
    from mlsafe.evaluate.judges import DEFAULT_REAL_JUDGE

    judge = judge or DEFAULT_REAL_JUDGE
    d = real_data(data, seed, n_per_lang=n_per_lang, n_xstest=n_xstest, n_harmless_per_lang=n_harmless_per_lang,
                  n_mgsm=n_mgsm, max_anchors=max_anchors, max_harmless=max_harmless, ngram=ngram,
                  near_threshold=near_threshold)
    judge_obj = suite_judge(judge, device)
    identity = model_identity(lm.model, lm.tokenizer)
    need = d.anchors_harmless + [p for p in d.anchors_harmful if p.lang == "en"]
    answered = {p.id: p for p in model_answers(
        lm.model, lm.tokenizer, need, cache_file=cache_file or default_cache_file(lm.name), model_id=identity,
        max_new_tokens=answer_tokens, batch_size=batch_size, batch_tokens=batch_tokens, decode_rows=decode_rows,
        progress=progress)}
    harmful = [answered.get(p.id, p) for p in d.anchors_harmful]
    en_harm = [p for p in harmful if p.lang == "en"]
    refused = [j.refusal if j.refusal is not None else not j.unsafe   # guard judges may not say
               for j in judge_obj.judge(en_harm, [p.response for p in en_harm])]
    not_refused = {p.parallel_id for p, r in zip(en_harm, refused) if not r}
    if english_refused_only:
        harmful = [p for p in harmful if p.parallel_id not in not_refused]
        if not harmful:
            raise UserError(f"the model refuses none of the {len(en_harm)} English harmful anchors (judge "
                            f"{judge}); the edit needs English refusals to transfer: check the model and "
                            "judge, or pass english_refused_only=False")
    suite = RealSuite(
        name="real-polyrefuse-multijail", anchors_harmful=harmful,
        anchors_harmless=[answered[p.id] for p in d.anchors_harmless],
        eval_harmful=d.eval_harmful, eval_harmless=d.eval_harmless, judge=judge_obj,
        refusal_starts=ev.DEFAULT_REFUSAL_STARTS, comply_starts=ev.DEFAULT_COMPLY_STARTS,
        correct=ev.mgsm_correct, max_new_tokens=max_new_tokens, sort_by_length=True, cache_responses=True,
        batch_size=batch_size, batch_tokens=batch_tokens, decode_rows=decode_rows, margin_batch=margin_batch,
        edit_defaults=real_edit_defaults(lm.model),
        response_chars=RESPONSE_CHARS)
    suite.report = {**d.report, "judge": judge, "model_identity": identity,
                    "anchor_refusal_rate_en": sum(refused) / len(refused) if refused else None}
    suite.report["anchor_rows"] = {**d.report["anchor_rows"],
                                   "dropped_not_refused_en": len(not_refused) if english_refused_only else 0}
    return suite


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mlsafe.data.real [--data ROOT] [--seed N]`: print, as JSON, the composition of
    the real-model suite's prompts and the anchor/evaluation overlap (no model needed)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mlsafe.data.real", description=main.__doc__)
    ap.add_argument("--data", default=None, help="data root folder or 'fixtures' (default: $MLSAFE_DATA, "
                                                 "else ../shared/data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-per-lang", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.8, help="near-duplicate 5-gram Jaccard threshold")
    args = ap.parse_args(argv)
    try:
        d = real_data(args.data, args.seed, n_per_lang=args.n_per_lang, near_threshold=args.threshold)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(d.report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
