"""User anchors: the parallel prompts an edit is fitted on (Algorithm 1), from JSONL files.

Format: UTF-8 JSON Lines, one object per line (blank lines are skipped)::

    {"parallel_id": "q17", "lang": "en", "text": "...", "harmful": true, "response": "I can't help with that."}
    {"parallel_id": "q17", "lang": "th", "text": "...", "harmful": true}
    {"parallel_id": "h3", "lang": "th", "text": "...", "harmful": false, "response": "..."}

- ``parallel_id`` (string or integer): the same for all translations of one request.
- ``lang``: a language code; any code is accepted (the language is data), ``(parallel_id,
  lang)`` must be unique across all files read.
- ``text``: the user message without chat template; not blank.
- ``harmful``: true or false; all translations of one parallel_id agree.
- ``response`` (optional): a reference answer. Required where the fit reads whole
  conversations into X_safe (mlsafe.transfer.collect_stats): every harmless anchor, and
  the source-language (English) harmful anchors, whose response is their refusal.

Every harmful anchor in a target language needs its source-language original (same
parallel_id), which supplies Y_target = X_en W_S of Theorem 4.1. A folder means every
``*.jsonl`` file in it (sorted by name, not recursive). Problems raise
:class:`mlsafe.errors.UserError` naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mlsafe.errors import UserError
from mlsafe.langs import SOURCE
from mlsafe.prompts import Prompt

REQUIRED = ("parallel_id", "lang", "text", "harmful")
OPTIONAL = ("response",)


def anchor_files(path_or_folder: str | Path) -> list[Path]:
    """The JSONL files `load` reads for `path_or_folder`; UserError when there are none."""
    path = Path(path_or_folder)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        if not files:
            raise UserError(f"anchor folder {path} holds no *.jsonl files")
        return files
    if not path.is_file():
        raise UserError(f"anchor file {path} does not exist")
    return [path]


def _record(obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED if k not in obj]
    unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise UserError(f"{where}: " + "; ".join(
            ([f"missing field(s) {missing}"] if missing else [])
            + ([f"unknown field(s) {unknown}"] if unknown else []))
            + f" (fields: {', '.join(REQUIRED)}, optional {', '.join(OPTIONAL)})")
    pid, lang, text, harmful = (obj[k] for k in REQUIRED)
    response = obj.get("response")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise UserError(f"{where}: parallel_id must be a non-empty string or an integer, got {pid!r}")
    if not isinstance(lang, str) or not lang.strip() or lang != lang.strip():
        raise UserError(f"{where}: lang must be a non-empty language code without spaces, got {lang!r}")
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: text is blank")
    if not isinstance(harmful, bool):
        raise UserError(f"{where}: harmful must be true or false, got {harmful!r}")
    if response is not None and (not isinstance(response, str) or not response.strip()):
        raise UserError(f"{where}: response must be a non-blank string when given")
    return {"parallel_id": str(pid), "lang": lang, "text": text, "harmful": harmful, "response": response}


def read_records(files: Sequence[Path]) -> list[tuple[str, dict]]:
    """(location "file:line", record) for every non-blank line of the files, field-checked."""
    out = []
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            out.append((where, _record(obj, where)))
    return out


def load(path_or_folder: str | Path, *, targets: Sequence[str] = (), source: str = SOURCE
         ) -> tuple[list[Prompt], list[Prompt]]:
    """(harmful, harmless) anchors from a JSONL file or a folder of them (module docstring).

    Checks: JSON and fields per line, duplicate (parallel_id, lang), harmful flag consistent
    within a parallel_id, a source-language original for every harmful anchor, responses
    where X_safe needs them, source-language harmful and harmless anchors present (the
    safety neurons are found on them), and harmful anchors in every language of `targets`.
    """
    files = anchor_files(path_or_folder)
    where_of = f"{path_or_folder}"
    records = read_records(files)
    if not records:
        raise UserError(f"{where_of} holds no anchors (only blank lines)")
    seen: dict[tuple[str, str], str] = {}
    flag: dict[str, tuple[bool, str]] = {}
    for where, r in records:
        key = (r["parallel_id"], r["lang"])
        if key in seen:
            raise UserError(f"{where}: duplicate anchor (parallel_id={key[0]!r}, lang={key[1]!r}), "
                            f"first at {seen[key]}")
        seen[key] = where
        first = flag.setdefault(r["parallel_id"], (r["harmful"], where))
        if first[0] != r["harmful"]:
            raise UserError(f"{where}: parallel_id {r['parallel_id']!r} is harmful={r['harmful']} here but "
                            f"harmful={first[0]} at {first[1]}; translations of one request agree")
    for where, r in records:
        if r["harmful"] and r["lang"] != source and (r["parallel_id"], source) not in seen:
            raise UserError(f"{where}: harmful anchor {r['parallel_id']!r} ({r['lang']}) has no {source} "
                            f"original (a line with the same parallel_id and lang {source!r})")
        needs_response = not r["harmful"] or r["lang"] == source
        if needs_response and r["response"] is None:
            what = "harmless anchors" if not r["harmful"] else f"{source} harmful anchors (their refusal)"
            raise UserError(f"{where}: {what} need a \"response\": the edit preserves whole conversations")
    harmful = [_prompt(r) for _, r in records if r["harmful"]]
    harmless = [_prompt(r) for _, r in records if not r["harmful"]]
    for group, name in ((harmful, "harmful"), (harmless, "harmless")):
        if not any(p.lang == source for p in group):
            raise UserError(f"{where_of} has no {source} {name} anchors; the safety neurons are found "
                            f"on {source} harmful vs harmless prompts")
    for lang in targets:
        if not any(p.lang == lang for p in harmful):
            raise UserError(f"{where_of} has no harmful anchors in target language {lang!r}; add some "
                            f"(with their {source} originals) or drop {lang!r} from the targets")
    return harmful, harmless


def _prompt(r: dict) -> Prompt:
    pid = r["parallel_id"]
    return Prompt(id=f"{pid}-{r['lang']}", lang=r["lang"], text=r["text"], harmful=r["harmful"],
                  parallel_id=pid, response=r["response"], source="user-anchors", cluster=pid)


def write(path: str | Path, harmful: Sequence[Prompt], harmless: Sequence[Prompt]) -> None:
    """Write prompts in this format (atomically), e.g. to export a suite's anchors for editing."""
    from mlsafe.results import write_atomic

    lines = []
    for p in [*harmful, *harmless]:
        obj = {"parallel_id": p.parallel_id, "lang": p.lang, "text": p.text, "harmful": p.harmful}
        if p.response is not None:
            obj["response"] = p.response
        lines.append(json.dumps(obj, ensure_ascii=False))
    write_atomic(Path(path), "\n".join(lines) + "\n")
