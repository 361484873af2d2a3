"""mlsafe.edit: edits touch only rows S, revert bit-exactly, round-trip, and refuse the wrong model."""

import pytest
import torch
from safetensors.torch import save_file

from mlsafe import arch
from mlsafe.edit import Fingerprints, SparseEdit, fingerprint, scaled_neurons
from tiny import D_FF, D_MODEL, MODEL_TYPES, VOCAB, tiny_model

torch.set_num_threads(1)

NEURONS = torch.tensor([3, 17, 40, 5])


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_identical(model, snapshot, except_names=()):
    for name, p in model.named_parameters():
        if name not in except_names:
            assert torch.equal(p, snapshot[name]), f"{name} changed"


def make_edit(model, modules=None, layer=1, rank=2, seed=0):
    modules = modules or arch.get_arch(model).editable
    g = torch.Generator().manual_seed(seed)
    factors = {m: (torch.randn(D_MODEL, rank, generator=g, dtype=torch.float64),
                   torch.randn(rank, len(NEURONS), generator=g, dtype=torch.float64))
               for m in modules}
    return SparseEdit(layer=layer, modules=tuple(modules), neurons=NEURONS, factors=factors,
                      hparams={"rank": rank, "gamma": 1.0, "lam": 0.01},
                      base_fingerprint=fingerprint(model, layer), model_type=model.config.model_type)


def _param_name(model, view):
    ptr = view.untyped_storage().data_ptr()
    return next(n for n, p in model.named_parameters() if p.untyped_storage().data_ptr() == ptr)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_edit_changes_only_rows_s_and_reverts_bit_exactly(model_type):
    model = tiny_model(model_type)
    editable = arch.get_arch(model).editable
    others = torch.ones(D_FF, dtype=torch.bool)
    others[NEURONS] = False
    for modules in {editable, ("up",)}:
        edit = make_edit(model, modules)
        before = _snapshot(model)
        views = {m: arch.neuron_weight(model, 1, m) for m in editable}
        originals = {m: v.detach().clone() for m, v in views.items()}
        touched = {_param_name(model, views[m]) for m in modules}
        with edit.applied(model):
            _assert_identical(model, before, except_names=touched)
            for m, view in views.items():
                if m not in modules:  # e.g. phi3's gate half of the fused gate_up_proj
                    assert torch.equal(view, originals[m])
                    continue
                expected = (originals[m][NEURONS].double() + edit.delta(m).T).float()
                assert torch.equal(view[NEURONS], expected)
                assert not torch.equal(view[NEURONS], originals[m][NEURONS])
                assert torch.equal(view[others], originals[m][others])
        _assert_identical(model, before)


def test_gpt2_edit_touches_columns_of_conv1d():
    model = tiny_model("gpt2")
    c_fc = model.transformer.h[1].mlp.c_fc.weight
    before = c_fc.detach().clone()
    edit = make_edit(model)
    with edit.applied(model):
        changed = (c_fc != before).any(dim=0)  # per column (= neuron) of the [d_in, d_out] weight
        assert changed.nonzero().flatten().sort().values.tolist() == sorted(NEURONS.tolist())
        assert torch.equal(c_fc[:, NEURONS], (before[:, NEURONS].double() + edit.delta("up")).float())
    assert torch.equal(c_fc, before)


def test_apply_twice_and_wrong_model_are_refused():
    model = tiny_model("llama")
    edit = make_edit(model)
    handle = edit.apply(model)
    with pytest.raises(ValueError, match="fingerprint differs.*already edited"):
        edit.apply(model)
    handle.revert()
    handle.revert()  # a second revert is a no-op
    with edit.applied(model):  # the reverted model is the base model again
        pass
    other = tiny_model("llama", seed=1)
    snapshot = _snapshot(other)
    with pytest.raises(ValueError, match="different checkpoint"):
        edit.apply(other)
    _assert_identical(other, snapshot)
    with pytest.raises(ValueError, match="model_type 'llama'.*'qwen2'"):
        edit.apply(tiny_model("qwen2"))
    with scaled_neurons(model, {1: NEURONS}, 2.0), pytest.raises(ValueError, match="fingerprint"):
        edit.apply(model)


def test_fingerprint_is_stable_and_sensitive():
    model = tiny_model("qwen3")
    fp = fingerprint(model, 1)
    assert fp == fingerprint(tiny_model("qwen3"), 1) and len(fp) == 64
    assert fp != fingerprint(model, 0) and fp != fingerprint(model)
    with torch.no_grad():
        arch.neuron_weight(model, 1, "gate")[7, 3] += 1e-3
    assert fingerprint(model, 1) != fp


def test_fingerprints_kept_hash_equals_fresh_one_and_tracks_applied_edits():
    """Fingerprints (the whole-model hash taken once, issue 17) give fingerprint()'s values,
    refuse once the applied edits change, and a model with an edit applied has its own."""
    model = tiny_model("llama")
    fps = Fingerprints(model)
    assert [fps(layer) for layer in (None, 0, 1)] == [fingerprint(model, layer) for layer in (None, 0, 1)]
    edit = make_edit(model, layer=1)
    with edit.applied(model, fingerprints=fps):  # the check hashes one layer, same verdict
        with pytest.raises(ValueError, match="applied edits changed"):
            fps(0)
        edited = Fingerprints(model)   # the edited state has fingerprints of its own
        assert edited(0) == fingerprint(model, 0) != Fingerprints(tiny_model("llama"))(0)
    assert fps(0) == fingerprint(model, 0)  # reverted exactly: the kept hash holds again
    with pytest.raises(ValueError, match="applied edits changed"):
        edited(0)
    with pytest.raises(ValueError, match="another model object"):
        edit.apply(tiny_model("llama"), fingerprints=fps)
    other = tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="different checkpoint"):
        edit.apply(other, fingerprints=Fingerprints(other))


@pytest.mark.parametrize("model_type", ["mistral", "phi3", "gpt2"])
def test_save_load_round_trip(tmp_path, model_type):
    model = tiny_model(model_type)
    edit = make_edit(model)
    wide = torch.randn(D_MODEL + 3, 9, dtype=torch.float32)  # views into larger, shared storage
    edit.factors["up"] = (wide[:D_MODEL, 1:3], wide[D_MODEL - 1:D_MODEL + 1, 5:9])
    edit.hparams["targets"] = ("th", "bn")
    path = tmp_path / "sub" / "edit.safetensors"
    edit.save(path)
    loaded = SparseEdit.load(path)
    assert (loaded.layer, loaded.modules, loaded.hparams, loaded.base_fingerprint, loaded.model_type) == \
        (edit.layer, edit.modules, {**edit.hparams, "targets": ["th", "bn"]}, edit.base_fingerprint,
         edit.model_type)
    assert torch.equal(loaded.neurons, edit.neurons) and loaded.neurons.dtype == torch.long
    for m in edit.modules:
        for got, want in zip(loaded.factors[m], edit.factors[m]):
            assert torch.equal(got, want) and got.dtype == want.dtype
    before = _snapshot(model)
    with loaded.applied(model):
        with_loaded = _snapshot(model)
    with edit.applied(model):
        _assert_identical(model, with_loaded)
    _assert_identical(model, before)
    assert [p.name for p in path.parent.iterdir()] == ["edit.safetensors"]  # no temp files left


def test_load_rejects_files_that_are_not_edits(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        SparseEdit.load(junk)
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an mlsafe edit"):
        SparseEdit.load(other)


def test_fraction_of_parameters():
    for model_type, modules in (("gemma", ("gate", "up")), ("gemma", ("gate",)), ("gpt2", ("up",))):
        model = tiny_model(model_type)
        n_params = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
        if model_type == "gpt2":  # tied lm_head / wte: the shared matrix counts once
            assert model.lm_head.weight is model.transformer.wte.weight
            n_params -= VOCAB * D_MODEL
        edit = make_edit(model, modules)
        assert edit.fraction_of_parameters(model) == len(NEURONS) * D_MODEL * len(modules) / n_params


def test_bad_edits_raise_clear_errors():
    model = tiny_model("llama")
    edit = make_edit(model)
    with pytest.raises(ValueError, match="modules must be"):
        SparseEdit(1, ("down",), NEURONS, {"down": edit.factors["up"]}, {}, "", "llama")
    with pytest.raises(ValueError, match="duplicate"):
        SparseEdit(1, ("up",), torch.tensor([1, 1, 2, 3]), {"up": edit.factors["up"]}, {}, "", "llama")
    with pytest.raises(ValueError, match=r"B \[r, 4\]"):
        SparseEdit(1, ("up",), NEURONS, {"up": (edit.factors["up"][0], torch.zeros(2, 3))}, {}, "", "llama")
    with pytest.raises(ValueError, match="JSON"):
        SparseEdit(1, ("up",), NEURONS, {"up": edit.factors["up"]}, {"x": object()}, "", "llama")
    far = SparseEdit(1, ("up",), torch.tensor([0, 1, 2, D_FF]), {"up": edit.factors["up"]}, {},
                     edit.base_fingerprint, "llama")
    with pytest.raises(ValueError, match=r"\[0, 48\)"):
        far.apply(model)
    gpt2 = tiny_model("gpt2")
    gated = make_edit(model, ("gate",))
    gated.model_type, gated.base_fingerprint = "gpt2", fingerprint(gpt2, 1)
    with pytest.raises(ValueError, match="no \\['gate'\\] projection"):
        gated.apply(gpt2)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_scaled_neurons_is_eq1_and_restores(model_type):
    """Scaling the 'down' rows equals multiplying a_j by alpha for j in S (eq. 1)."""
    model = tiny_model(model_type)
    before = _snapshot(model)
    x = torch.randn(4, D_MODEL, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = arch.activations_from_inputs(model, 1, x)
        scale = torch.ones(D_FF)
        scale[NEURONS] = 3.0
        expected, unscaled = arch.down_module(model, 1)(a * scale), arch.mlp(model, 1)(x)
        with scaled_neurons(model, {1: NEURONS}, 3.0):
            scaled = arch.mlp(model, 1)(x)
    assert torch.allclose(scaled, expected, atol=1e-7, rtol=1e-5)
    assert not torch.allclose(scaled, unscaled, atol=1e-7, rtol=1e-3)
    _assert_identical(model, before)
    with pytest.raises(ValueError, match="duplicate"):
        with scaled_neurons(model, {0: NEURONS, 1: torch.tensor([2, 2])}, 2.0):
            pass
    _assert_identical(model, before)  # the layer-0 scaling was undone although layer 1 failed


@pytest.mark.parametrize("n", [1, 5, 65_536, 65_537, 167_772_160, 2**31 + 7])
def test_fingerprint_samples_stay_inside_large_tensors(n):
    from mlsafe.edit import _SAMPLES_PER_TENSOR, sample_indices

    idx = sample_indices(n)
    assert idx.numel() == min(n, _SAMPLES_PER_TENSOR) and int(idx[0]) == 0 and int(idx[-1]) == n - 1
    assert bool((idx[1:] > idx[:-1]).all())
