"""The activation-patching ceiling (mlsafe.ceiling) on tiny random models."""

import pytest
import torch

from mlsafe import arch, ceiling
from tiny import tiny_model

R, C = [5, 6], [7, 8]


def _ids(seed, n=5, length=(4, 9)):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        k = int(torch.randint(length[0], length[1], (1,), generator=g))
        rows.append(torch.randint(3, 100, (k,), generator=g).tolist() + [42])   # same last token
    return rows


def _full_margins(model, ids):
    enc = ceiling._inputs(ids, 0, "cpu")
    with torch.no_grad():
        return ceiling.margins_from_logits(model(**enc).logits[:, -1], R, C)


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "gemma2"])
def test_unpatched_and_source_margins_match_full_forward(model_type):
    model = tiny_model(model_type)
    tgt, src = _ids(0), _ids(1)
    res = ceiling.patching_ceiling(model, tgt, src, [0, 1], R, C,
                                   neuron_sets={0: torch.tensor([1, 3]), 1: torch.tensor([0])}, batch_size=2)
    torch.testing.assert_close(res["target"], _full_margins(model, tgt), atol=1e-5, rtol=0)
    torch.testing.assert_close(res["source"], _full_margins(model, src), atol=1e-5, rtol=0)
    assert set(res["patched"]) == {(l, s) for l in (0, 1) for s in ceiling.SITES}


def test_residual_patch_at_last_layer_gives_the_source_margin():
    """The last layer's residual at the last position fixes the logits: patching it with the
    source's must reproduce the source margin exactly, and the earlier layer must not."""
    model = tiny_model("qwen2")
    tgt, src = _ids(2), _ids(3)
    last = arch.n_layers(model) - 1
    res = ceiling.patching_ceiling(model, tgt, src, [0, last], R, C, sites=("residual",), batch_size=3)
    torch.testing.assert_close(res["patched"][(last, "residual")], res["source"], atol=1e-5, rtol=0)
    assert not torch.allclose(res["patched"][(0, "residual")], res["source"], atol=1e-3)


def test_patching_with_own_values_changes_nothing_and_hooks_are_removed():
    model = tiny_model("llama")
    tgt = _ids(4)
    sets = {0: torch.arange(arch.d_ff(model)), 1: torch.tensor([2, 5])}
    res = ceiling.patching_ceiling(model, tgt, tgt, [0, 1], R, C, neuron_sets=sets)
    for m in res["patched"].values():
        torch.testing.assert_close(m, res["target"], atol=1e-5, rtol=0)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in model.modules())
    rows = ceiling.summarize(res)
    assert len(rows) == 6 and all(abs(r["margin_gain"]) < 1e-5 for r in rows)


def test_patching_all_neurons_equals_patching_the_mlp():
    """a(x) of every neuron determines the MLP output, so the two patches agree."""
    model = tiny_model("qwen2")
    tgt, src = _ids(5), _ids(6)
    sets = {1: torch.arange(arch.d_ff(model))}
    res = ceiling.patching_ceiling(model, tgt, src, [1], R, C, neuron_sets=sets)
    torch.testing.assert_close(res["patched"][(1, "neurons")], res["patched"][(1, "mlp")], atol=1e-5, rtol=0)
    assert not torch.allclose(res["patched"][(1, "mlp")], res["target"], atol=1e-4)


def test_bad_input_is_refused():
    model = tiny_model("qwen2")
    with pytest.raises(ValueError, match="parallel rows"):
        ceiling.patching_ceiling(model, _ids(0), _ids(1)[:2], [0], R, C, sites=("mlp",))
    with pytest.raises(ValueError, match="same last token"):
        ceiling.patching_ceiling(model, [[4, 5, 6]], [[4, 5, 7]], [0], R, C, sites=("mlp",))
    with pytest.raises(ValueError, match="neuron_sets"):
        ceiling.patching_ceiling(model, _ids(0), _ids(1), [0], R, C)


def test_ceiling_command_on_a_tiny_folder(tmp_path, capsys):
    """`mlsafe ceiling` end to end on a tiny Qwen2 folder with the fixture data: every layer
    and site has a row, the figure is written, a used folder and a bad layer are refused."""
    import json

    from mlsafe import tiny
    from mlsafe.__main__ import main

    folder = tiny.build(tmp_path / "tiny", seed=0, archs=("qwen2",))["qwen2"]
    out = tmp_path / "ceil"
    assert main(["ceiling", str(folder), "--lang", "th", "--out", str(out), "--data", "fixtures"]) == 0
    rec = json.loads((out / "ceiling.json").read_text())
    assert (out / "ceiling.png").stat().st_size > 0
    assert rec["targets"] == ["th"] and rec["layers"] == [0, 1]
    assert {(r["layer"], r["site"]) for r in rec["rows"]} <= {(l, s) for l in (0, 1) for s in ceiling.SITES}
    assert {(r["layer"], r["site"]) for r in rec["rows"]} >= {(l, s) for l in (0, 1) for s in ("mlp", "residual")}
    last = [r for r in rec["rows"] if r["layer"] == 1 and r["site"] == "residual"][0]
    assert last["share_of_gap"] == pytest.approx(1.0, abs=1e-4)   # the last residual fixes the logits
    capsys.readouterr()
    assert main(["ceiling", str(folder), "--lang", "th", "--out", str(out), "--data", "fixtures"]) == 2
    assert main(["ceiling", str(folder), "--lang", "th", "--out", str(tmp_path / "c2"), "--data", "fixtures",
                 "--layers", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all("Traceback" not in line for line in err)
