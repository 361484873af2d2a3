"""mlsafe.data.anchors: the user-anchor JSONL format, its loader and every validation rule."""

from __future__ import annotations

import json

import pytest

from mlsafe.data import anchors
from mlsafe.errors import UserError

# Abstract placeholder content (no real requests).
GOOD = [
    {"parallel_id": "h1", "lang": "en", "text": "placeholder harmful request one", "harmful": True,
     "response": "I can't help with that."},
    {"parallel_id": "h1", "lang": "th", "text": "placeholder thai one", "harmful": True},
    {"parallel_id": "h1", "lang": "sw", "text": "placeholder swahili one", "harmful": True},
    {"parallel_id": 2, "lang": "en", "text": "placeholder harmful request two", "harmful": True,
     "response": "I won't do that."},
    {"parallel_id": 2, "lang": "th", "text": "placeholder thai two", "harmful": True, "response": "x"},
    {"parallel_id": "s1", "lang": "en", "text": "placeholder harmless question", "harmful": False,
     "response": "A placeholder answer."},
    {"parallel_id": "s1", "lang": "th", "text": "placeholder harmless thai", "harmful": False,
     "response": "A placeholder thai answer."},
]


def write(path, rows, *, raw_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loads_the_documented_format(tmp_path):
    harmful, harmless = anchors.load(write(tmp_path / "a.jsonl", GOOD), targets=["th", "sw"])
    assert [(p.parallel_id, p.lang) for p in harmful] == [("h1", "en"), ("h1", "th"), ("h1", "sw"),
                                                          ("2", "en"), ("2", "th")]
    assert [(p.parallel_id, p.lang) for p in harmless] == [("s1", "en"), ("s1", "th")]
    assert harmful[0].id == "h1-en" and harmful[0].response == "I can't help with that."
    assert harmful[1].response is None and all(p.harmful for p in harmful) and not any(p.harmful for p in harmless)
    assert harmless[1].response == "A placeholder thai answer."


def test_folder_reads_every_jsonl_file_and_roundtrips(tmp_path):
    write(tmp_path / "1_harmful.jsonl", [r for r in GOOD if r["harmful"]])
    write(tmp_path / "2_harmless.jsonl", [r for r in GOOD if not r["harmful"]])
    (tmp_path / "notes.txt").write_text("not anchors")
    harmful, harmless = anchors.load(tmp_path)
    assert len(harmful) == 5 and len(harmless) == 2
    out = tmp_path / "out" / "all.jsonl"
    anchors.write(out, harmful, harmless)
    assert anchors.load(out) == (harmful, harmless)


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows.__setitem__(1, {**rows[1], "text": "   "}), r"a\.jsonl:2: text is blank"),
    (lambda rows: rows.append(dict(rows[2])), r"a\.jsonl:8: duplicate anchor \(parallel_id='h1', lang='sw'\), "
                                              r"first at .*a\.jsonl:3"),
    (lambda rows: rows.append({"parallel_id": "h9", "lang": "th", "text": "orphan", "harmful": True}),
     r"a\.jsonl:8: harmful anchor 'h9' \(th\) has no en original"),
    (lambda rows: rows[6].pop("response"), r"a\.jsonl:7: harmless anchors need a \"response\""),
    (lambda rows: rows[0].pop("response"), r"a\.jsonl:1: en harmful anchors \(their refusal\) need a"),
    (lambda rows: rows.__setitem__(6, {**rows[6], "harmful": True}), r"a\.jsonl:7: parallel_id 's1' is harmful=True"),
    (lambda rows: rows.__setitem__(0, {**rows[0], "harmfull": True}), r"a\.jsonl:1: unknown field\(s\) \['harmfull'\]"),
    (lambda rows: rows[3].pop("lang"), r"a\.jsonl:4: missing field\(s\) \['lang'\]"),
    (lambda rows: rows.__setitem__(3, {**rows[3], "harmful": "yes"}), r"a\.jsonl:4: harmful must be true or false"),
    (lambda rows: rows.__setitem__(3, {**rows[3], "lang": ""}), r"a\.jsonl:4: lang must be a non-empty"),
    (lambda rows: rows.__delitem__(slice(5, 7)), r"has no en harmless anchors"),
])
def test_each_rule_names_file_and_line(tmp_path, change, message):
    rows = [dict(r) for r in GOOD]
    change(rows)
    with pytest.raises(UserError, match=message):
        anchors.load(write(tmp_path / "a.jsonl", rows))


def test_json_errors_name_file_and_line(tmp_path):
    path = write(tmp_path / "a.jsonl", GOOD[:3], raw_lines=["", '{"parallel_id": "x", oops}'])
    with pytest.raises(UserError, match=r"a\.jsonl:5: invalid JSON"):
        anchors.load(path)
    write(path, GOOD[:2], raw_lines=["[1, 2]"])
    with pytest.raises(UserError, match=r"a\.jsonl:3: expected a JSON object, got list"):
        anchors.load(path)


def test_every_target_needs_anchors(tmp_path):
    path = write(tmp_path / "a.jsonl", GOOD)
    with pytest.raises(UserError, match=r"a\.jsonl has no harmful anchors in target language 'bn'"):
        anchors.load(path, targets=["th", "bn"])
    assert anchors.load(path, targets=["th"])


def test_missing_or_empty_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        anchors.load(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="holds no \\*.jsonl files"):
        anchors.load(tmp_path)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="holds no anchors"):
        anchors.load(tmp_path / "blank.jsonl")
