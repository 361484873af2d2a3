"""``mlsafe judge``: round trip on a small JSONL, pass-through fields, line-numbered errors,
nothing written on error, atomic output, never over the input."""

import json

import pytest

from mlsafe.__main__ import main
from mlsafe.commands import judge as judge_cmd
from mlsafe.errors import UserError

ROWS = [  # placeholder content, never real instructions
    {"id": "a", "lang": "en", "prompt": "[request]", "response": "I'm sorry, but I can't help with that.",
     "model": "m1", "extra": {"k": [1, 2]}},
    {"lang": "zh", "id": "b", "prompt": "[请求]", "response": "当然，以下是步骤：\n1. [步骤省略]", "model": "m1"},
    {"id": "c", "lang": "ja", "prompt": "[依頼の文]", "response": "", "model": "m2"},
    {"id": "d", "lang": "th", "prompt": "[คำขอ]", "response": "ขออภัย ฉันไม่สามารถช่วยได้", "model": "m2"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("judge", ["rules", "rules+clf", "phrase"])
def test_round_trip(tmp_path, capsys, judge):
    src, dst = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out" / "judged.jsonl"
    assert main(["judge", "--input", str(src), "--output", str(dst), "--judge", judge]) == 0
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert len(out) == len(ROWS)
    for row, o in zip(ROWS, out):
        assert list(o)[:len(row)] == list(row)  # pass-through fields first, in their order
        assert {k: o[k] for k in row} == row
        assert set(o) - set(row) == {"label", "refusal", "harmful", "judge"}
        assert isinstance(o["refusal"], bool) and o["harmful"] in (True, False, None)
    assert [o["refusal"] for o in out] == [True, False, False, True]
    if judge != "phrase":
        assert [o["label"] for o in out] == ["refusal", "compliance", "unclear", "refusal"]
        assert [o["harmful"] for o in out][::2] == [False, False]
    text = capsys.readouterr().out
    assert "wrote" in text and str(dst) in text and "zh" in text and "ASR metric" in text
    assert not list(dst.parent.glob(".*.tmp"))  # the atomic write left no temp file


def test_default_judge_is_the_real_default(tmp_path):
    from mlsafe.evaluate.judges import DEFAULT_REAL_JUDGE

    src, dst = write_jsonl(tmp_path / "in.jsonl", ROWS[:1]), tmp_path / "out.jsonl"
    assert main(["judge", "--input", str(src), "--output", str(dst)]) == 0
    assert json.loads(dst.read_text())["judge"] == DEFAULT_REAL_JUDGE


@pytest.mark.parametrize("bad_line, match", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ('{"lang": "en", "prompt": "[p]"}', "missing field 'response'"),
    ('{"lang": "en", "prompt": "[p]", "response": 3}', "'response' must be a string"),
    ('{"lang": "xx", "prompt": "[p]", "response": "r"}', "lang 'xx'"),
])
def test_malformed_row_names_file_and_line_and_writes_nothing(tmp_path, capsys, bad_line, match):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n\n" + bad_line + "\n" + json.dumps(ROWS[1]) + "\n")
    dst = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match=rf"in\.jsonl:3: .*{match}"):
        judge_cmd.read_rows(src)
    assert main(["judge", "--input", str(src), "--output", str(dst)]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:3:" in err and len(err.strip().splitlines()) == 1
    assert not dst.exists() and not list(tmp_path.glob(".*.tmp"))


def test_refuses_to_overwrite_input_and_missing_or_empty_files(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    before = src.read_text()
    with pytest.raises(UserError, match="input file"):
        judge_cmd.run(_args(src, src))
    with pytest.raises(UserError, match="input file"):
        judge_cmd.run(_args(src, tmp_path / "." / "in.jsonl"))
    assert src.read_text() == before
    with pytest.raises(UserError, match="no such input"):
        judge_cmd.run(_args(tmp_path / "missing.jsonl", tmp_path / "o.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no rows"):
        judge_cmd.run(_args(tmp_path / "empty.jsonl", tmp_path / "o.jsonl"))


def test_existing_output_is_replaced_atomically(tmp_path, monkeypatch):
    """A failed write keeps the old output whole (write_atomic replaces it in one step)."""
    import os

    src, dst = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    dst.write_text("old\n")

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        judge_cmd.run(_args(src, dst))
    assert dst.read_text() == "old\n" and not list(tmp_path.glob(".*.tmp"))


def _args(src, dst, judge="rules"):
    import argparse

    return argparse.Namespace(input=str(src), output=str(dst), judge=judge)
