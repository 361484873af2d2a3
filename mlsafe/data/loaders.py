"""Real data sets (Sec. 5) as lists of Prompt, from a local folder or the Hugging Face hub.

Where data comes from (`source`):
- None:        the local folder $MLSAFE_DATA/<key>/ (default ./data/<key>/) if it holds data
               files, else `datasets.load_dataset(hub_id, revision=PINNED[hub_id])`.
- "fixtures":  the small fixture files bundled in mlsafe/data/fixtures/ (same layout and
               formats as the real data sets; placeholder content). DATA=fixtures in make.
- "hub":       the hub only.
- a path:      that folder used as the data root (<path>/<key>/), no hub fallback.

Offline, a failed hub load raises DataUnavailable naming the data set, its revision and
the folder to put it in. Local folders hold the hub repository's files as downloaded
(e.g. `hf download <id> --repo-type dataset --revision <rev> --local-dir $MLSAFE_DATA/<key>`);
csv, tsv, parquet, json and jsonl files are read.

Ids: parallel_id = "<key>-<row>" (the same across translations), id = "<parallel_id>-<lang>".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from mlsafe.errors import UserError
from mlsafe.langs import LANGS
from mlsafe.prompts import Prompt

FIXTURES_DIR = Path(__file__).parent / "fixtures"
DATA_ENV = "MLSAFE_DATA"
_SUFFIXES = (".csv", ".tsv", ".parquet", ".json", ".jsonl")

# Pinned revisions. Full commit hashes were read off the hub's file listings where the
# stored pages showed them; "main" marks a revision that could not be verified here and
# MUST be replaced by a commit hash before results are reported.
PINNED: dict[str, str] = {
    "walledai/StrongREJECT": "df54272b395ce9e584d2f8140519935425d8549f",
    "DAMO-NLP-SG/MultiJail": "189375ca64f5c09f8db2b22f833c57c4418c55ab",
    "LLM-LAT/harmful-dataset": "8bfba31bc6d93a5b71808fee5275ef4b6330ed91",
    "declare-lab/HarmfulQA": "6f1a78aed47d16c0695e4595d0159abc38197bfd",
    "walledai/CatHarmfulQA": "main",          # unverified: pin a commit hash
    "facebook/natural_reasoning": "8c9292b8932b86f90360ca6b152c2e23ca9252ab",
    "juletxara/mgsm": "main",                 # unverified: pin a commit hash
    "openai/MMMLU": "main",                   # unverified: pin a commit hash
}

#: MultiJail's ten languages (its CSV has one column per language).
MULTIJAIL_LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
#: MGSM configs among the paper's languages (MGSM has no vi, id, he).
MGSM_LANGS = ("en", "zh", "ja", "th", "bn")
#: MMMLU configs among the paper's languages (MMMLU has no en, vi, th, he).
MMMLU_CONFIGS = {"zh": "ZH_CN", "ja": "JA_JP", "id": "ID_ID", "bn": "BN_BD"}


class DataUnavailable(RuntimeError, UserError):
    """A data set could not be loaded; the message says what to download and where to put it
    (a UserError: the CLI prints it as one line)."""


@dataclass(frozen=True)
class DataSpec:
    key: str          # folder name under the data root
    hub: str          # hub id
    layout: str       # what the folder must hold (for error messages)
    pattern: str = "**/*"

    @property
    def revision(self) -> str:
        return PINNED[self.hub]


SPECS = {
    "strongreject": DataSpec("strongreject", "walledai/StrongREJECT",
                             "a parquet/csv file with a 'prompt' (or 'forbidden_prompt') column"),
    "multijail": DataSpec("multijail", "DAMO-NLP-SG/MultiJail",
                          "MultiJail.csv (columns id, source, tags and one per language)"),
    "harmfulqa": DataSpec("harmfulqa", "declare-lab/HarmfulQA",
                          "data_for_hub.json (or parquet) with a 'question' column"),
    "catharmfulqa": DataSpec("catharmfulqa", "walledai/CatHarmfulQA",
                             "data/en-*.parquet with a 'prompt' column", "**/en-*"),
    "llm_lat_harmful": DataSpec("llm_lat_harmful", "LLM-LAT/harmful-dataset",
                                "data/train-*.parquet with a 'prompt' column"),
    "natural_reasoning": DataSpec("natural_reasoning", "facebook/natural_reasoning",
                                  "data/train-*.parquet with a 'question' column"),
    "mgsm": DataSpec("mgsm", "juletxara/mgsm", "mgsm_<lang>.tsv (question<TAB>answer_number, no header)"),
    "mmmlu": DataSpec("mmmlu", "openai/MMMLU",
                      "test/mmlu_<CONFIG>.csv (columns Question, A, B, C, D, Answer, Subject)"),
}


def data_root(source: str | os.PathLike | None) -> Path | None:
    """The local data root for a source (None for "hub")."""
    if source == "fixtures":
        return FIXTURES_DIR
    if source == "hub":
        return None
    if source is None:
        return Path(os.environ.get(DATA_ENV, "data"))
    return Path(source)


def _read_file(path: Path, columns: list[str] | None) -> pd.DataFrame:
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise DataUnavailable(f"reading {path} needs pyarrow: pip install 'mlsafe[data]' ({err})") from err
    if path.suffix == ".tsv":
        return pd.read_csv(path, sep="\t", header=None, names=columns, dtype=str,
                           keep_default_na=False, quoting=3)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False)


def _read_local(folder: Path, pattern: str, tsv_columns: list[str] | None = None) -> pd.DataFrame | None:
    files = sorted(p for p in folder.glob(pattern)
                   if p.is_file() and p.suffix in _SUFFIXES and ".cache" not in p.parts)
    if not files:
        return None
    return pd.concat([_read_file(p, tsv_columns) for p in files], ignore_index=True)


def _unavailable(spec: DataSpec, root: Path | None, why: str, config: str | None = None) -> DataUnavailable:
    where = root if root is not None else Path(os.environ.get(DATA_ENV, "data"))
    cfg = f", config {config}" if config else ""
    return DataUnavailable(
        f"{spec.hub} (revision {spec.revision}{cfg}) is not available: {why}\n"
        f"Download it, e.g. `hf download {spec.hub} --repo-type dataset --revision {spec.revision} "
        f"--local-dir {where / spec.key}`, so that {where / spec.key}/ holds {spec.layout} "
        f"(set ${DATA_ENV} to use another data root). "
        "Or run the pipeline on the bundled fixtures with DATA=fixtures (source='fixtures')."
    )


def load_table(name: str, source=None, *, config: str | None = None, split: str = "train",
               pattern: str | None = None, tsv_columns: list[str] | None = None,
               limit: int | None = None) -> pd.DataFrame:
    """One data set as a DataFrame: local folder first (see module docstring), then the hub."""
    spec = SPECS[name]
    root = data_root(source)
    if root is not None:
        df = _read_local(root / spec.key, pattern or spec.pattern, tsv_columns)
        if df is not None:
            return df.head(limit) if limit else df
        if source is not None:
            raise _unavailable(spec, root, f"no data files matching {pattern or spec.pattern!r} in "
                                           f"{root / spec.key}", config)
    try:
        import datasets

        if limit:
            stream = datasets.load_dataset(spec.hub, config, split=split, revision=spec.revision,
                                           streaming=True)
            return pd.DataFrame(list(stream.take(limit)))
        return datasets.load_dataset(spec.hub, config, split=split, revision=spec.revision).to_pandas()
    except Exception as err:  # offline, missing, gated, renamed: all end the same way
        raise _unavailable(spec, root, f"loading from the hub failed ({type(err).__name__}: {err})",
                           config) from err


def _column(df: pd.DataFrame, names: Sequence[str], dataset: str) -> pd.Series:
    for n in names:
        if n in df.columns:
            return df[n]
    raise DataUnavailable(f"{dataset}: none of the columns {list(names)} found (has {list(df.columns)}); "
                          "the files do not have the expected format")


def _prompts(key: str, lang: str, texts, *, harmful: bool, rows=None, answers=None,
             responses=None) -> list[Prompt]:
    n = len(texts)
    rows = range(n) if rows is None else rows
    answers = [None] * n if answers is None else answers
    responses = [None] * n if responses is None else responses
    return [Prompt(id=f"{key}-{r}-{lang}", lang=lang, text=str(t), harmful=harmful,
                   parallel_id=f"{key}-{r}", answer=None if a is None else str(a),
                   response=str(resp) if resp else None)
            for r, t, a, resp in zip(rows, texts, answers, responses) if str(t).strip()]


#: The reference refusal given to harmful anchors that have none (X_safe uses whole
#: conversations, and for harmful anchors the conversation is the refusal).
REFUSAL_RESPONSES = {
    "en": "I'm sorry, but I can't help with that.",
    "zh": "抱歉，我不能帮助你。",
    "vi": "Xin lỗi, tôi không thể giúp việc đó.",
    "ja": "申し訳ありませんが、お手伝いできません。",
    "th": "ขออภัย ฉันไม่สามารถช่วยได้",
    "id": "Maaf, saya tidak bisa membantu.",
    "bn": "দুঃখিত, আমি সাহায্য করতে পারব না।",
    "he": "מצטער, אני לא יכול לעזור בזה.",
}


# ------------------------------------------------------------------ parallel folders
def write_parallel_folder(prompts: Sequence[Prompt], folder: str | Path) -> None:
    """Write prompts as <folder>/<lang>.csv (parallel_id, text, answer, response), one file per language."""
    from mlsafe.results import write_atomic

    df = pd.DataFrame({"lang": [p.lang for p in prompts], "parallel_id": [p.parallel_id for p in prompts],
                       "text": [p.text for p in prompts],
                       "answer": [p.answer if p.answer is not None else "" for p in prompts],
                       "response": [p.response if p.response is not None else "" for p in prompts]})
    for lang, part in df.groupby("lang"):
        write_atomic(Path(folder) / f"{lang}.csv", part.drop(columns="lang").to_csv(index=False))


def read_parallel_folder(folder: str | Path, langs: Sequence[str], *, harmful: bool) -> list[Prompt]:
    """Read <folder>/<lang>.csv files written by write_parallel_folder (or by hand; columns
    parallel_id, text and optionally answer, response). Harmful prompts without a response
    get the language's REFUSAL_RESPONSES entry."""
    folder = Path(folder)
    missing = [l for l in langs if not (folder / f"{l}.csv").is_file()]
    if missing:
        raise DataUnavailable(
            f"no translations for {missing} in {folder}/ (expected <lang>.csv files with columns "
            "parallel_id, text); build them on a GPU with `python -m mlsafe.data.translate`, "
            "or use DATA=fixtures")
    out = []
    for lang in langs:
        df = pd.read_csv(folder / f"{lang}.csv", dtype=str, keep_default_na=False)
        answers = df["answer"] if "answer" in df.columns else [""] * len(df)
        responses = df["response"] if "response" in df.columns else [""] * len(df)
        fallback = REFUSAL_RESPONSES.get(lang) if harmful else None
        out += [Prompt(id=f"{pid}-{lang}", lang=lang, text=t, harmful=harmful, parallel_id=pid,
                       answer=a or None, response=r or fallback)
                for pid, t, a, r in zip(df["parallel_id"], df["text"], answers, responses)]
    return out


def _split_langs(langs: Sequence[str]) -> tuple[bool, list[str]]:
    unknown = [l for l in langs if l not in LANGS]
    if unknown:
        raise ValueError(f"unknown language codes {unknown}; use codes from {LANGS}")
    return "en" in langs, [l for l in langs if l != "en"]


# ------------------------------------------------------------------ test sets
def load_strongreject(source=None) -> list[Prompt]:
    """StrongREJECT (313 English harmful prompts, MIT), the paper's test set before translation."""
    df = load_table("strongreject", source)
    return _prompts("strongreject", "en", list(_column(df, ["prompt", "forbidden_prompt"], "StrongREJECT")),
                    harmful=True)


def load_multi_strongreject(folder: str | Path | None = None, langs: Sequence[str] = LANGS, *,
                            source=None) -> list[Prompt]:
    """Multi-StrongREJECT: StrongREJECT in the 8 languages (parallel_id = StrongREJECT row).

    English comes from StrongREJECT itself; the other languages from <folder>/<lang>.csv
    (default <data root>/multi_strongreject), built by `python -m mlsafe.data.translate strongreject`.
    """
    with_en, others = _split_langs(langs)
    root = data_root(source)
    folder = Path(folder) if folder is not None else (root or Path("data")) / "multi_strongreject"
    out = load_strongreject(source) if with_en else []
    return out + read_parallel_folder(folder, others, harmful=True)


def load_multijail(source=None, langs: Sequence[str] | None = None) -> list[Prompt]:
    """MultiJail (315 prompts x 10 languages, one CSV column per language). Default langs:
    the paper's languages that MultiJail covers (en, zh, vi, th, bn)."""
    langs = [l for l in MULTIJAIL_LANGS if l in LANGS] if langs is None else list(langs)
    bad = [l for l in langs if l not in MULTIJAIL_LANGS]
    if bad:
        raise ValueError(f"MultiJail has no languages {bad}; it has {MULTIJAIL_LANGS}")
    df = load_table("multijail", source)
    rows = list(_column(df, ["id"], "MultiJail"))
    return [p for lang in langs
            for p in _prompts("multijail", lang, list(_column(df, [lang], "MultiJail")), harmful=True, rows=rows)]


# ------------------------------------------------------------------ anchor sets
def load_anchors_harmful(source=None, langs: Sequence[str] = ("en",), *,
                         limit_per_source: int | None = None) -> list[Prompt]:
    """Harmful anchors: HarmfulQA questions, CatHarmfulQA (English split) and LLM-LAT harmful
    prompts; non-English languages from <data root>/translations/anchors_harmful/<lang>.csv.
    response: LLM-LAT's refusal ('chosen') where the data set has one, else REFUSAL_RESPONSES."""
    with_en, others = _split_langs(langs)
    out: list[Prompt] = []
    if with_en:
        for key, cols in (("harmfulqa", ["question"]), ("catharmfulqa", ["prompt", "Question"]),
                          ("llm_lat_harmful", ["prompt"])):
            split = "en" if key == "catharmfulqa" else "train"
            df = load_table(key, source, split=split, limit=limit_per_source)
            chosen = df["chosen"] if "chosen" in df.columns else [""] * len(df)
            out += _prompts(key, "en", list(_column(df, cols, key)), harmful=True,
                            responses=[c or REFUSAL_RESPONSES["en"] for c in chosen])
    return out + read_parallel_folder(_translations(source, "anchors_harmful"), others, harmful=True)


def load_anchors_harmless(source=None, langs: Sequence[str] = ("en",), *, limit: int | None = 2000
                          ) -> list[Prompt]:
    """Harmless anchors: the first `limit` NaturalReasoning questions (the paper does not say
    how many; OPEN) with their reference answers as responses; non-English from
    <data root>/translations/anchors_harmless/<lang>.csv."""
    with_en, others = _split_langs(langs)
    out: list[Prompt] = []
    if with_en:
        df = load_table("natural_reasoning", source, limit=limit)
        out += _prompts("natural_reasoning", "en", list(_column(df, ["question"], "NaturalReasoning")),
                        harmful=False, responses=list(_column(df, ["reference_answer"], "NaturalReasoning")))
    return out + read_parallel_folder(_translations(source, "anchors_harmless"), others, harmful=False)


def _translations(source, name: str) -> Path:
    return (data_root(source) or Path(os.environ.get(DATA_ENV, "data"))) / "translations" / name


# ------------------------------------------------------------------ utility sets
def load_mgsm(langs: Sequence[str], source=None) -> list[Prompt]:
    """MGSM test questions (answer = the answer number) for the languages MGSM covers
    (MGSM_LANGS); other requested languages are skipped, as the paper averages over covered ones."""
    covered = [l for l in langs if l in MGSM_LANGS]
    if not covered:
        raise ValueError(f"MGSM covers none of {list(langs)}; it has {MGSM_LANGS}")
    out = []
    for lang in covered:
        df = load_table("mgsm", source, config=lang, split="test", pattern=f"**/mgsm_{lang}.tsv",
                        tsv_columns=["question", "answer_number"])
        out += _prompts("mgsm", lang, list(_column(df, ["question"], "MGSM")), harmful=False,
                        answers=list(_column(df, ["answer_number"], "MGSM")))
    return out


def mmlu_text(question: str, options: Sequence[str]) -> str:
    """The multiple-choice user message: question, lettered options, an answer instruction."""
    opts = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", options))
    return f"{question}\n{opts}\nAnswer with the letter (A, B, C or D) of the correct option."


def load_mmmlu(langs: Sequence[str], source=None, *, limit_per_lang: int | None = None) -> list[Prompt]:
    """MMMLU (M-MMLU) test questions for the languages it covers (MMMLU_CONFIGS); answer = letter."""
    covered = [l for l in langs if l in MMMLU_CONFIGS]
    if not covered:
        raise ValueError(f"MMMLU covers none of {list(langs)}; it has {sorted(MMMLU_CONFIGS)}")
    out = []
    for lang in covered:
        cfg = MMMLU_CONFIGS[lang]
        df = load_table("mmmlu", source, config=cfg, split="test", pattern=f"**/mmlu_{cfg}.csv")
        df = df.head(limit_per_lang) if limit_per_lang else df
        texts = [mmlu_text(q, [a, b, c, d]) for q, a, b, c, d in
                 zip(*(_column(df, [k], "MMMLU") for k in ("Question", "A", "B", "C", "D")))]
        out += _prompts("mmmlu", lang, texts, harmful=False, answers=list(_column(df, ["Answer"], "MMMLU")))
    return out
