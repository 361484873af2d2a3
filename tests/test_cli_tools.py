"""`mlsafe edit`, `mlsafe apply` and `mlsafe audit` end to end on tiny random Qwen2 and Llama
folders with fixture data; bad inputs print one line and exit 2."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mlsafe import tiny
from mlsafe.__main__ import main
from mlsafe.data import anchors
from mlsafe.edit import SparseEdit


@pytest.fixture(autouse=True, scope="module")
def no_progress_bars():
    """transformers' weight-loading bar writes to stderr; the error line is what is checked."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def edits(folders, tmp_path_factory):
    """One `mlsafe edit --lang th --data fixtures` per tiny model: {arch: out folder}."""
    root = tmp_path_factory.mktemp("edits")
    out = {}
    for arch, folder in folders.items():
        assert main(["edit", str(folder), "--lang", "th", "--out", str(root / arch), "--data", "fixtures",
                     "--layer", "1", "--rank", "4"]) == 0
        out[arch] = root / arch
    return out


def logits(model, tok):
    text = tok.apply_chat_template([{"role": "user", "content": "The cat sleeps on the mat."}], tokenize=False,
                                   add_generation_prompt=True)
    with torch.no_grad():
        return model(input_ids=torch.tensor([tok.encode(text, add_special_tokens=False)])).logits


def one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_edit_then_apply_gives_plain_transformers_folders(arch, folders, edits, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = edits[arch]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "edit.safetensors", "reproduce.json"]
    edit = SparseEdit.load(out / "edit.safetensors")
    rec = json.loads((out / "reproduce.json").read_text())
    assert rec["layer"] == edit.layer == 1 and rec["n_neurons"] == edit.neurons.numel() > 0
    assert rec["base_fingerprint"] == edit.base_fingerprint and rec["config"]["rank"] == 4
    weights = folders[arch] / "model.safetensors"
    assert rec["inputs"][str(weights)] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert any("mlsafe/data/fixtures" in k for k in rec["inputs"])
    val = rec["validation"]
    assert set(val["margin_harmful"]["before"]) == {"en", "th"} and set(val["first_token_kl"]) >= {"en", "th"}
    assert all(v >= 0 for v in val["first_token_kl"].values())
    card = (out / "README.md").read_text()
    assert f"| layer | {edit.layer} |" in card and edit.base_fingerprint in card and "mlsafe apply" in card

    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    capsys.readouterr()
    assert main(["apply", str(out / "edit.safetensors"), str(folders[arch]), "--save-merged", str(merged)]) == 0
    assert main(["apply", str(out / "edit.safetensors"), str(folders[arch]), "--save-adapter", str(adapter)]) == 0
    assert f"wrote {merged}" in capsys.readouterr().out

    base = AutoModelForCausalLM.from_pretrained(folders[arch], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folders[arch])
    base_logits = logits(base, tok)
    with edit.applied(base):
        edited = logits(base, tok)
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(plain, AutoTokenizer.from_pretrained(merged)), edited, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, base_logits)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    torch.testing.assert_close(logits(peft_model, tok), edited, rtol=1e-5, atol=1e-5)


def test_edit_with_user_anchors_records_their_hash(folders, tmp_path, capsys):
    from mlsafe.suites import real_suite

    suite = real_suite("fixtures")
    path = tmp_path / "anchors.jsonl"
    anchors.write(path, suite.anchors_harmful, suite.anchors_harmless)
    out = tmp_path / "edit"
    assert main(["edit", str(folders["qwen2"]), "--lang", "th,bn", "--out", str(out), "--anchors", str(path),
                 "--layer", "auto"]) == 0
    printed = capsys.readouterr().out
    assert "harmful margin" in printed and "first-token KL" in printed and f"wrote {out / 'README.md'}" in printed
    rec = json.loads((out / "reproduce.json").read_text())
    assert rec["inputs"][str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(rec["candidates"]) == 2 and rec["config"]["targets"] == ["th", "bn"]
    assert set(rec["validation"]["margin_harmful"]["before"]) == {"en", "th", "bn"}


def test_audit_writes_its_json(folders, edits, tmp_path, capsys):
    out = tmp_path / "audit.json"
    assert main(["audit", str(folders["llama"]), "--langs", "en,th", "--data", "fixtures", "--n", "3",
                 "--edit", str(edits["llama"] / "edit.safetensors"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["langs"] == ["en", "th"] and r["judge"] == "refusal-phrase"
    for block in ("refusal", "asr", "over_refusal"):
        for lang, b in r[block].items():
            assert b["n"] >= 1 and b["k"] == round(b["rate"] * b["n"])
            assert 0 <= b["ci"][0] <= b["rate"] <= b["ci"][1] <= 1
    assert set(r["asr"]) == {"en", "th"} and all(b["n"] == 3 for b in r["asr"].values())
    assert all(r["refusal"][lang]["k"] + r["asr"][lang]["k"] <= 3 for lang in ("en", "th"))
    assert set(r["margin"]) == {"en", "th"} and all(v > 0 for v in r["first_token_kl"].values())
    assert "over-refusal" in printed and f"wrote {out}" in printed


def test_bad_inputs_print_one_line_and_exit_2(folders, edits, tmp_path, capsys):
    edit_file = str(edits["qwen2"] / "edit.safetensors")
    assert main(["apply", str(tmp_path / "missing.safetensors"), str(folders["qwen2"]),
                 "--save-merged", str(tmp_path / "m")]) == 2
    one_line_error(capsys, "does not exist")
    assert main(["apply", edit_file, str(folders["llama"]), "--save-adapter", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "model_type 'qwen2'")
    other = tiny.build(tmp_path / "seed1", seed=1, archs=("qwen2",))["qwen2"]
    assert main(["apply", edit_file, str(other), "--save-merged", str(tmp_path / "m")]) == 2
    one_line_error(capsys, "fingerprint")
    assert not (tmp_path / "m").exists() and not (tmp_path / "a").exists()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["apply", edit_file, str(folders["qwen2"]), "--save-merged", str(full)]) == 2
    one_line_error(capsys, "not an empty folder")
    assert main(["edit", str(folders["qwen2"]), "--lang", "th", "--out", str(full), "--data", "fixtures"]) == 2
    one_line_error(capsys, "choose another output folder")
    assert (full / "keep.txt").read_text() == "mine"

    assert main(["edit", str(folders["qwen2"]), "--lang", "xx", "--out", str(tmp_path / "e")]) == 2
    one_line_error(capsys, "unknown target language")
    path = tmp_path / "few.jsonl"
    path.write_text(json.dumps({"parallel_id": 1, "lang": "en", "text": "placeholder", "harmful": True,
                                "response": "No."}) + "\n" + json.dumps(
        {"parallel_id": 2, "lang": "en", "text": "placeholder two", "harmful": False, "response": "Yes."}) + "\n")
    assert main(["edit", str(folders["qwen2"]), "--lang", "bn", "--out", str(tmp_path / "e"),
                 "--anchors", str(path)]) == 2
    one_line_error(capsys, "no harmful anchors in target language 'bn'")
    assert main(["edit", str(folders["qwen2"]), "--lang", "th", "--out", str(tmp_path / "e"), "--layer", "x"]) == 2
    one_line_error(capsys, "--layer must be 'auto'")
    assert main(["audit", str(folders["qwen2"]), "--langs", "sw", "--data", "fixtures", "--n", "2",
                 "--out", str(tmp_path / "au.json")]) == 2
    one_line_error(capsys, "no language(s) ['sw']")
    assert not (tmp_path / "e").exists() and not (tmp_path / "au.json").exists()
