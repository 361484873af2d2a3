"""Edit files: a corrupt, inconsistent or hostile file is never applied; identical edits are
byte-identical; save never clobbers a model's weights; the base-model fingerprint sees every
entry and ignores dtype and device."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

from mlsafe import arch
from mlsafe.edit import SparseEdit, canonical_safetensors, content_sha256, fingerprint
from tiny import D_MODEL, tiny_model

torch.set_num_threads(1)

NEURONS = torch.tensor([3, 17, 40, 5])


def make_edit(model, layer=1, rank=2, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    factors = {m: (scale * torch.randn(D_MODEL, rank, generator=g), torch.randn(rank, len(NEURONS), generator=g))
               for m in ("gate", "up")}
    return SparseEdit(layer=layer, modules=("gate", "up"), neurons=NEURONS, factors=factors,
                      hparams={"rank": rank, "gamma": 1.0, "lam": 0.01},
                      base_fingerprint=fingerprint(model, layer), model_type=model.config.model_type)


def _header(raw: bytes) -> tuple[int, dict]:
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n])


def _resign(edit: SparseEdit, tensors=None, meta=None) -> bytes:
    """A hostile file that carries a *valid* content_sha256 for its altered content."""
    t, m = edit.tensors_and_metadata()
    t.update(tensors or {})
    m.update(meta or {})
    m["content_sha256"] = content_sha256(t, m)
    return canonical_safetensors(t, m)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model("qwen2")
    edit = make_edit(model)
    path = tmp_path / "edit.safetensors"
    edit.save(path)
    return model, edit, path


def test_a_flipped_byte_in_a_factor_is_refused(saved):
    """Before: the exponent flip loaded and gave max |dW| = 1e38 in the model."""
    model, edit, path = saved
    raw = bytearray(path.read_bytes())
    n, header = _header(bytes(raw))
    start = 8 + n + header["gate.A"]["data_offsets"][0]
    raw[start + 3] ^= 0x7F  # the exponent byte of gate.A[0, 0] (float32, little-endian)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"edit file .* is corrupt.*re-save or re-fit"):
        SparseEdit.load(path)


@pytest.mark.parametrize("meta", [{"modules": json.dumps(["gate"])}, {"layer": "0"},
                                  {"hparams": json.dumps({"rank": 2, "gamma": 9.0, "lam": 0.01})},
                                  {"base_fingerprint": "0" * 64}])
def test_edited_metadata_is_refused(saved, meta):
    """Before: modules -> ["gate"] applied half the edit; stale hparams loaded."""
    _, edit, path = saved
    t, m = edit.tensors_and_metadata()
    m.update(meta)
    path.write_bytes(canonical_safetensors(t, m))  # the old content_sha256 kept
    with pytest.raises(ValueError, match="is corrupt"):
        SparseEdit.load(path)


@pytest.mark.parametrize("neurons", [NEURONS + 1, NEURONS.flip(0)], ids=["shifted", "reversed"])
def test_changed_neurons_are_refused(saved, neurons):
    _, edit, path = saved
    t, m = edit.tensors_and_metadata()
    t["neurons"] = neurons.contiguous()
    path.write_bytes(canonical_safetensors(t, m))
    with pytest.raises(ValueError, match="is corrupt"):
        SparseEdit.load(path)


def test_a_nan_factor_is_refused_even_with_a_valid_content_hash(saved):
    """Before: a NaN factor loaded and made the edited weights non-finite."""
    model, edit, path = saved
    a = edit.factors["up"][0].clone()
    a[0, 0] = float("nan")
    path.write_bytes(_resign(edit, {"up.A": a}))
    with pytest.raises(ValueError, match="NaN or inf"):
        SparseEdit.load(path)
    edit.factors["up"] = (a, edit.factors["up"][1])  # mutated in memory: apply refuses too
    before = arch.neuron_weight(model, 1, "up").detach().clone()
    with pytest.raises(ValueError, match="NaN or inf"):
        edit.apply(model)
    assert torch.equal(arch.neuron_weight(model, 1, "up"), before)


@pytest.mark.parametrize("case", ["half_modules", "stale_rank", "int32_neurons", "extra_tensor"])
def test_inconsistent_but_signed_files_are_refused(saved, case):
    _, edit, path = saved
    if case == "half_modules":
        raw = _resign(edit, meta={"modules": json.dumps(["gate"])})
    elif case == "stale_rank":
        raw = _resign(edit, meta={"hparams": json.dumps({"rank": 8, "gamma": 1.0, "lam": 0.01})})
    elif case == "int32_neurons":
        raw = _resign(edit, {"neurons": NEURONS.int()})
    else:
        raw = _resign(edit, {"down.A": torch.zeros(D_MODEL, 2)})
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="is corrupt"):
        SparseEdit.load(path)


def test_identical_edits_are_byte_identical(tmp_path):
    """Before: the safetensors metadata map was written in arbitrary order."""
    model = tiny_model("qwen2")
    blobs = set()
    for k in range(6):
        path = tmp_path / f"e{k}.safetensors"
        make_edit(model).save(path)
        blobs.add(path.read_bytes())
    assert len(blobs) == 1
    raw = blobs.pop()
    n, header = _header(raw)
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert n % 8 == 0
    loaded = SparseEdit.load(tmp_path / "e0.safetensors")
    for m in ("gate", "up"):
        assert torch.equal(loaded.factors[m][0], make_edit(model).factors[m][0])


def test_save_never_clobbers_a_file_that_is_not_an_edit(tmp_path):
    """Before: SparseEdit.save onto model.safetensors replaced the weights (502,632 -> 7,744 bytes)."""
    from safetensors.torch import save_file

    model = tiny_model("qwen2")
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    original = weights.read_bytes()
    edit = make_edit(model)
    with pytest.raises(ValueError, match="refusing to replace .*not an mlsafe edit.*overwrite=True"):
        edit.save(weights)
    assert weights.read_bytes() == original
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="refusing to replace"):
        edit.save(text)
    edit.save(tmp_path / "edit.safetensors")
    make_edit(model, seed=1).save(tmp_path / "edit.safetensors")  # an edit over an edit: a rerun
    assert SparseEdit.load(tmp_path / "edit.safetensors").factors["up"][0].equal(
        make_edit(model, seed=1).factors["up"][0])
    edit.save(weights, overwrite=True)
    assert SparseEdit.load(weights).layer == 1


def _old_samples(n: int) -> set[int]:
    """The entries the previous fingerprint looked at: 1024 evenly spaced per tensor."""
    return set((torch.arange(1024) * (n - 1) // 1023).tolist())


def _wide_qwen2(seed=0):
    config = transformers.AutoConfig.for_model(
        "qwen2", vocab_size=128, hidden_size=64, intermediate_size=2048, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


def test_fingerprint_sees_entries_the_old_sample_skipped():
    """Before: down_proj[0, 1] += 5 and a one-neuron edit on another layer went unnoticed."""
    model = _wide_qwen2()
    fp = fingerprint(model, 2)
    down = model.model.layers[0].mlp.down_proj.weight
    assert 1 not in _old_samples(down.numel())
    with torch.no_grad():
        down[0, 1] += 5
    assert fingerprint(model, 2) != fp
    with torch.no_grad():
        down[0, 1] -= 5
    assert fingerprint(model, 2) == fp
    up = model.model.layers[1].mlp.up_proj.weight        # [2048, 64]: one neuron = one row
    skipped = [j for j in range(up.shape[0]) if not set(range(j * 64, (j + 1) * 64)) & _old_samples(up.numel())]
    assert skipped, "the old sampler had to miss some neurons at this size"
    with torch.no_grad():
        up[skipped[0]] += 0.01 * up[skipped[0]].abs().max()
    assert fingerprint(model, 2) != fp


def test_fingerprint_ignores_dtype_but_not_the_model():
    """Before: an edit fitted in float32 was refused on a bfloat16 copy ("fingerprint differs")."""
    model = tiny_model("qwen2")
    edit = make_edit(model)
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert fingerprint(half, 1) == fingerprint(model, 1)
    w = arch.neuron_weight(half, 1, "up")
    before = w.detach().clone()
    with edit.applied(half):
        assert not torch.equal(w, before) and w.dtype == torch.bfloat16
    assert torch.equal(w, before)
    other = tiny_model("qwen2", seed=1).to(torch.bfloat16)
    with pytest.raises(ValueError, match="fingerprint differs"):
        edit.apply(other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fingerprint_ignores_the_device():
    model = tiny_model("qwen2")
    edit = make_edit(model)
    gpu = copy.deepcopy(model).to("cuda")
    assert fingerprint(gpu, 1) == fingerprint(model, 1)
    assert fingerprint(copy.deepcopy(model).to("cuda", torch.bfloat16), 1) == fingerprint(model, 1)
    with edit.applied(gpu):
        pass
    with pytest.raises(ValueError, match="fingerprint differs"):
        edit.apply(tiny_model("qwen2", seed=1).to("cuda"))


def test_an_edit_below_the_fingerprint_resolution_is_not_stacked():
    """A second edit on a layer already patched is refused even when the first is too small
    for the bfloat16-rounded fingerprint to see."""
    model = tiny_model("qwen2")
    tiny_edit = make_edit(model, scale=1e-12)
    with tiny_edit.applied(model):
        assert fingerprint(model, 1) == tiny_edit.base_fingerprint
        with pytest.raises(ValueError, match="already has an applied edit"):
            make_edit(model, seed=1).apply(model)
    with make_edit(model, seed=1).applied(model):  # reverted: allowed again
        pass
