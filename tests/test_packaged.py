"""mlsafe.packaged: assembly and verification on synthetic wheels, the cached float folder's
checks on a tiny saved model, and (slow) the real packaged Qwen2.5-Coder-0.5B."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import replace

import pytest
import torch

from mlsafe import packaged, tiny
from mlsafe.errors import UserError
from mlsafe.packaged import Part


def _fake_wheels(tmp_path, monkeypatch, chunks: list[bytes], prefix: str = "mlsafefakepart"):
    """Install fake part packages `<prefix>1..N`==1.0 (module + dist-info) on sys.path."""
    site = tmp_path / "site"
    parts = []
    for i, data in enumerate(chunks, start=1):
        mod = site / f"{prefix}{i}"
        (mod / "data").mkdir(parents=True)
        (mod / "__init__.py").write_text("")
        (mod / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"{prefix}{i}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}{i}\nVersion: 1.0\n")
        parts.append(Part(f"{prefix}{i}", f"{prefix}{i}", "1.0", hashlib.sha256(data).hexdigest(), len(data),
                          f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    return packaged.PackagedGGUF(
        key="fake", parts=tuple(parts), file_name="fake.gguf", sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole), model_type="qwen2", n_layers=2, d_model=64, d_ff=128, chat_template=None,
        stop_tokens=("<|im_end|>",), licence="test data", install_hint="pip install fake-parts")


CHUNKS = [b"GGUF" + bytes(range(256)) * 7, bytes(range(255, -1, -1)) * 5, b"tail"]


def test_assemble_concatenates_the_parts_in_order_into_the_cache(tmp_path, monkeypatch):
    spec = _fake_wheels(tmp_path, monkeypatch, CHUNKS)
    path = packaged.assemble(spec, tmp_path / "cache")
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary file left
    assert packaged.assemble(spec, tmp_path / "cache") == path          # reused, re-verified


def test_wrong_part_hash_is_refused_naming_the_package(tmp_path, monkeypatch):
    spec = _fake_wheels(tmp_path, monkeypatch, CHUNKS)
    bad = list(spec.parts)
    bad[1] = replace(bad[1], sha256="0" * 64)
    with pytest.raises(UserError, match=r"mlsafefakepart2==1\.0 .*force-reinstall"):
        packaged.assemble(replace(spec, parts=tuple(bad)), tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf" / "fake.gguf").exists()
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []        # the partial file is removed


def test_wrong_part_size_is_refused_before_reading(tmp_path, monkeypatch):
    spec = _fake_wheels(tmp_path, monkeypatch, CHUNKS)
    bad = (spec.parts[0], spec.parts[1], replace(spec.parts[2], size=5))
    with pytest.raises(UserError, match=r"mlsafefakepart3==1\.0 .*4 bytes, expected 5"):
        packaged.assemble(replace(spec, parts=bad), tmp_path / "cache")


def test_wrong_assembled_hash_is_refused(tmp_path, monkeypatch):
    spec = _fake_wheels(tmp_path, monkeypatch, CHUNKS)
    with pytest.raises(UserError, match="assemble to .* expected .* pip install fake-parts"):
        packaged.assemble(replace(spec, sha256="f" * 64), tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf" / "fake.gguf").exists()
    # parts in the wrong order each match, but the whole does not
    with pytest.raises(UserError, match="assemble to"):
        packaged.assemble(replace(spec, parts=spec.parts[::-1]), tmp_path / "cache")


def test_corrupted_assembled_file_is_refused_naming_it(tmp_path, monkeypatch):
    spec = _fake_wheels(tmp_path, monkeypatch, CHUNKS)
    path = packaged.assemble(spec, tmp_path / "cache")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UserError, match=f"{path}.*delete it"):
        packaged.assemble(spec, tmp_path / "cache")


def test_missing_or_other_version_wheel_names_the_fix(tmp_path, monkeypatch):
    spec = _fake_wheels(tmp_path, monkeypatch, CHUNKS)
    gone = replace(spec.parts[0], dist="mlsafe-no-such-dist")
    with pytest.raises(UserError, match="mlsafe-no-such-dist==1.0, which is not installed: pip install fake-parts"):
        packaged.assemble(replace(spec, parts=(gone,) + spec.parts[1:]), tmp_path / "cache")
    old = replace(spec.parts[0], version="0.9")
    with pytest.raises(UserError, match=r"needs mlsafefakepart1==0\.9 but 1\.0 is installed"):
        packaged.assemble(replace(spec, parts=(old,) + spec.parts[1:]), tmp_path / "cache")


def test_conversion_without_gguf_names_the_install(tmp_path, monkeypatch):
    spec = _fake_wheels(tmp_path, monkeypatch, CHUNKS)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(UserError, match="needs the gguf package: pip install fake-parts"):
        packaged.load(spec, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # refused before any work


# ----------------------------------------------------------------------------- the cached float folder
@pytest.fixture
def cached(tmp_path):
    """A spec and its cache root whose base/ folder holds a tiny Qwen2 saved as a conversion would."""
    tok = tiny.build_tokenizer("qwen2")
    model = tiny.build_model("qwen2", tok, seed=0)
    spec = packaged.PackagedGGUF(
        key="fake", parts=(), file_name="fake.gguf", sha256="0" * 64, size=0, model_type="qwen2",
        n_layers=2, d_model=64, d_ff=128, chat_template=None, stop_tokens=("<|im_end|>", "<|endoftext|>"),
        licence="test", install_hint="pip install fake-parts")
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    packaged.write_manifest(spec, base)
    return spec, tmp_path


def test_cached_folder_loads_with_its_stop_tokens(cached):
    spec, root = cached
    timings = {}
    model, tok = packaged.load(spec, root, progress=False, timings=timings)
    assert not model.training and model.config.hidden_size == 64
    stops = {tok.convert_tokens_to_ids(t) for t in spec.stop_tokens}
    assert stops <= set(model.generation_config.eos_token_id)
    assert set(timings) == {"verify_cache_s", "load_float_s"}          # nothing assembled or converted
    with pytest.raises(ValueError, match="expected"):
        packaged.load(replace(spec, d_ff=99), root, progress=False)


def test_changed_cached_weights_are_refused_naming_the_folder(cached):
    spec, root = cached
    weights = root / "base" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF  # same length, valid header, one changed byte
    weights.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"changed since conversion.*delete the folder {root / 'base'}"):
        packaged.load(spec, root, progress=False)


def test_truncated_safetensors_is_refused_naming_the_file(cached):
    spec, root = cached
    weights = root / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match=f"{weights} is truncated or corrupt.*delete the folder"):
        packaged.load(spec, root, progress=False)


def test_missing_tokenizer_file_names_the_folder(cached):
    spec, root = cached
    (root / "base" / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=f"lacks tokenizer.json: delete the folder {root / 'base'}"):
        packaged.load(spec, root, progress=False)


def test_a_cache_without_manifest_gets_one_recorded(cached):
    spec, root = cached
    manifest = root / "base" / packaged.MANIFEST
    recorded = json.loads(manifest.read_text())["files"]
    manifest.unlink()
    packaged.verify_cache(spec, root / "base")
    assert json.loads(manifest.read_text())["files"] == recorded
    assert "model.safetensors" in recorded and "tokenizer.json" in recorded


def test_stop_tokens_are_added_once_and_unknown_ones_refused():
    tok = tiny.build_tokenizer("qwen2")
    model = tiny.build_model("qwen2", tok, seed=0)
    for _ in range(2):
        packaged.add_stop_tokens(model, tok, ("<|im_end|>", "<|endoftext|>"))
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"),
                                                    tok.convert_tokens_to_ids("<|endoftext|>")]
    with pytest.raises(ValueError, match="no token '<|nope|>'"):
        packaged.add_stop_tokens(model, tok, ("<|nope|>",))


def test_packaged_qwen_specs_are_consistent():
    for spec in (packaged.QWEN_CODER_05B, packaged.QWEN_CODER_15B):
        assert sum(p.size for p in spec.parts) == spec.size
        assert len({p.sha256 for p in spec.parts}) == len(spec.parts)
        assert [p.file for p in spec.parts] == [f"data/part{i:02d}.bin" for i in range(1, len(spec.parts) + 1)]
    assert len(packaged.QWEN_CODER_05B.parts) == 6 and len(packaged.QWEN_CODER_15B.parts) == 22


# ----------------------------------------------------------------------------- the real 0.5B (slow)
_QWEN05 = all(importlib.util.find_spec(p.module) for p in packaged.QWEN_CODER_05B.parts) \
    and importlib.util.find_spec("gguf") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _QWEN05, reason="optional extra mlsafe[qwen05] not installed "
                                        "(pip install -e '.[qwen05]')")
def test_real_qwen_coder_05b_loads_and_stops_at_im_end():
    spec = packaged.QWEN_CODER_05B
    model, tok = packaged.load(spec, progress=False)  # converts once (about a minute), then cached
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.intermediate_size) == ("qwen2", 24, 896, 4864)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (4864, 896)
    assert model.dtype == torch.float32
    assert "<|im_start|>" in tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "Say OK."}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in new and new.index(im_end) == len(new) - 1  # stopped right at <|im_end|>
    assert len(new) < 40
