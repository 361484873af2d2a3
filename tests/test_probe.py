"""mlsafe.probe: capture is exact and side-effect free; streamed statistics equal dense ones."""

import pytest
import torch

from mlsafe import arch, probe
from tiny import D_FF, D_MODEL, MODEL_TYPES, tiny_model, tiny_tokenizer

torch.set_num_threads(1)

TEXTS = ["Hello there, friend.", "Why?", "A much longer prompt with many words in it!", "ok 42"]


def _no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def _ids(n=7, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 60, (b, n), generator=g)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_capture_shapes_values_and_no_side_effects(model_type):
    model = tiny_model(model_type)
    ids = _ids()
    with torch.no_grad():
        reference = model(ids).logits
        with probe.capture(model, [0, 1], activations=True) as cap:
            logits = model(ids).logits
        assert torch.equal(logits, reference)
        assert _no_hooks(model)
        for layer in (0, 1):
            x, a = cap.mlp_inputs[layer], cap.activations[layer]
            assert x.shape == (2, 7, D_MODEL) and a.shape == (2, 7, D_FF)
            assert torch.allclose(a, arch.activations_from_inputs(model, layer, x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma2"])
def test_hooks_removed_when_forward_raises(model_type):
    model = tiny_model(model_type)

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = arch.blocks(model)[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with probe.capture(model, [0, 1], activations=True) as cap:
                model(_ids())
        assert 0 in cap.mlp_inputs  # layer 0 ran before the failure
    finally:
        handle.remove()
    assert _no_hooks(model)


@pytest.mark.parametrize("model_type", ["qwen3", "phi3", "gpt2"])
def test_stop_after_last_stops(model_type):
    model = tiny_model(model_type)
    fired = []
    handle = arch.blocks(model)[1].register_forward_pre_hook(lambda m, a: fired.append(1))
    try:
        with torch.no_grad():
            with probe.capture(model, [0], activations=True, stop_after_last=True) as cap:
                assert cap.forward(_ids()) is None
            assert cap.activations[0].shape == (2, 7, D_FF)
            after = []
            with probe.capture(model, [0], stop_after_last=True) as cap2:
                model(_ids())
                after.append("not reached")  # the stop skips the rest of the block
            assert cap2.mlp_inputs[0].shape == (2, 7, D_MODEL) and not after
    finally:
        handle.remove()
    assert fired == [] and _no_hooks(model)


def test_capture_rejects_bad_arguments():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="layer must be an int"):
        probe.capture(model, [5])
    with pytest.raises(ValueError, match="nothing to capture"):
        probe.capture(model, [0], mlp_inputs=False)


def test_moments_and_gram_stream_exactly():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(53, 6, generator=g, dtype=torch.float32) * 3 + 10
    y = torch.randn(53, 4, generator=g)
    moments, gram = probe.Moments(), probe.Gram()
    for chunk in (slice(0, 1), slice(1, 20), slice(20, 20), slice(20, 53)):
        moments.update(x[chunk])
        gram.update(x[chunk], y[chunk])
    xd, yd = x.double(), y.double()
    assert moments.n == gram.n == 53 and moments.mean.dtype == torch.float64
    assert torch.allclose(moments.mean, xd.mean(0), rtol=1e-12, atol=0)
    assert torch.allclose(moments.var, xd.var(0, unbiased=True), rtol=1e-12, atol=0)
    assert torch.allclose(gram.xtx, xd.T @ xd, rtol=1e-12, atol=0)
    assert torch.allclose(gram.xty, xd.T @ yd, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="every update or in none"):
        gram.update(x[:2])
    with pytest.raises(ValueError, match="at least 2 rows"):
        one = probe.Moments()
        one.update(x[:1])
        one.var
    with pytest.raises(ValueError, match="2-D"):
        probe.Moments().update(x[0])


def test_select_positions_left_right_and_explicit_mask():
    g = torch.Generator().manual_seed(2)
    rows = [torch.randn(n, 3, generator=g) for n in (2, 5)]
    T = 5
    left, right = torch.zeros(2, T, 3), torch.zeros(2, T, 3)
    mleft, mright = torch.zeros(2, T, dtype=torch.long), torch.zeros(2, T, dtype=torch.long)
    for i, r in enumerate(rows):
        left[i, T - len(r):], mleft[i, T - len(r):] = r, 1
        right[i, :len(r)], mright[i, :len(r)] = r, 1
    for h, mask in ((left, mleft), (right, mright)):
        assert torch.equal(probe.select_positions(h, mask, "last"), torch.stack([r[-1] for r in rows]))
        assert torch.allclose(probe.select_positions(h, mask, "mean"),
                              torch.stack([r.double().mean(0) for r in rows]), atol=1e-12)
        assert torch.equal(probe.select_positions(h, mask, "all"), torch.cat(rows))
        only = mask.bool() & (mask.cumsum(1) <= 2)  # each row's first two real tokens
        assert torch.equal(probe.select_positions(h, mask, only), torch.cat([r[:2] for r in rows]))
        assert torch.equal(probe.select_positions(h, mask, "last2"), torch.cat([r[-2:] for r in rows]))
        assert torch.equal(probe.select_positions(h, mask, "last1"), probe.select_positions(h, mask, "last"))
    with pytest.raises(ValueError, match="position must be one of"):
        probe.select_positions(left, mleft, "first")
    with pytest.raises(ValueError, match="position must be one of"):
        probe.select_positions(left, mleft, "last0")
    with pytest.raises(ValueError, match="fewer than 1 kept token"):
        probe.select_positions(left, torch.zeros(2, T), "last")
    with pytest.raises(ValueError, match="fewer than 3 kept token"):
        probe.select_positions(left, mleft, "last3")  # the first row has 2 real tokens


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_padding_gives_unpadded_statistics(model_type):
    """Left- and right-padded batches read the same last/mean rows as single prompts."""
    model, tok = tiny_model(model_type), tiny_tokenizer()
    texts = TEXTS[:3]
    singles = []
    with torch.no_grad():
        for text in texts:
            enc = probe.encode_batch(tok, [text])
            with probe.capture(model, [1], activations=True) as cap:
                cap.forward(**enc)
            singles.append(cap.activations[1][0])
        left = probe.encode_batch(tok, texts)
        lens = left["attention_mask"].sum(1)
        T = left["input_ids"].shape[1]
        right = {k: torch.zeros_like(v) for k, v in left.items()}
        for i, n in enumerate(lens.tolist()):
            for k in left:
                right[k][i, :n] = left[k][i, T - n:]
        for enc in (left, right):
            with probe.capture(model, [1], activations=True) as cap:
                cap.forward(**enc)
            a = cap.activations[1]
            last = probe.select_positions(a, enc["attention_mask"], "last")
            mean = probe.select_positions(a, enc["attention_mask"], "mean")
            for i, single in enumerate(singles):
                assert torch.allclose(last[i], single[-1], atol=1e-5, rtol=1e-4)
                assert torch.allclose(mean[i], single.double().mean(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_collect_matches_dense_and_restores_mode(model_type):
    model, tok = tiny_model(model_type), tiny_tokenizer()
    model.train()
    dense_a, dense_x = [], []
    with torch.no_grad():
        model.eval()
        for text in TEXTS:
            with probe.capture(model, [0, 1], activations=True) as cap:
                cap.forward(**probe.encode_batch(tok, [text]))
            dense_a.append(cap.activations[0][0].double().mean(0))
            dense_x.append(cap.mlp_inputs[1][0].double().mean(0))
        model.train()
    stats = probe.collect(model, tok, TEXTS, [0, 1], position="mean",
                          what=("activations", "mlp_inputs"), batch_size=3)
    assert model.training and torch.is_grad_enabled()
    a, x = torch.stack(dense_a), torch.stack(dense_x)
    assert stats[0]["activations"].n == 4 and stats[1]["mlp_inputs"].n == 4
    assert torch.allclose(stats[0]["activations"].mean, a.mean(0), atol=1e-6)
    assert torch.allclose(stats[0]["activations"].var, a.var(0), atol=1e-6)
    assert torch.allclose(stats[1]["mlp_inputs"].xtx, x.T @ x, atol=1e-5)

    # a narrower position mask: only each prompt's first three tokens, "all" positions
    first3 = probe.collect(model, tok, TEXTS, [0], position="all", batch_size=2,
                           position_mask_fn=lambda texts, enc: enc["attention_mask"].cumsum(1) <= 3)
    assert first3[0]["activations"].n == 3 * len(TEXTS)


def test_collect_paired_cross_gram():
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    a_texts, b_texts = TEXTS, ["Bonjour.", "Pourquoi?", "Une autre phrase, longue.", "d'accord 42"]
    rows = {}
    with torch.no_grad():
        for name, texts in (("a", a_texts), ("b", b_texts)):
            out, out2 = [], []
            for text in texts:
                with probe.capture(model, [1]) as cap:
                    cap.forward(**probe.encode_batch(tok, [text]))
                out.append(cap.mlp_inputs[1][0, -1].double())
                out2.append(cap.mlp_inputs[1][0, -2:].double())
            rows[name], rows[name + "2"] = torch.stack(out), torch.cat(out2)
    gram = probe.collect_paired(model, tok, a_texts, b_texts, [1], position="last", batch_size=3)[1]
    assert gram.n == 4
    assert torch.allclose(gram.xtx, rows["a"].T @ rows["a"], atol=1e-5)
    assert torch.allclose(gram.xty, rows["a"].T @ rows["b"], atol=1e-5)
    # "last2": each prompt's last two tokens, paired position by position
    gram2 = probe.collect_paired(model, tok, a_texts, b_texts, [1], position="last2", batch_size=3)[1]
    assert gram2.n == 8
    assert torch.allclose(gram2.xty, rows["a2"].T @ rows["b2"], atol=1e-5)
    with pytest.raises(ValueError, match="parallel lists"):
        probe.collect_paired(model, tok, a_texts, b_texts[:2], [1])
    with pytest.raises(ValueError, match="'last', 'lastK' or 'mean'"):
        probe.collect_paired(model, tok, a_texts, b_texts, [1], position="all")


@pytest.mark.parametrize("position", ["last", "last2"])
def test_collect_fused_equals_the_separate_passes(position):
    # float64 model: the fused pass's different batch composition changes nothing beyond round-off
    model, tok = tiny_model("llama").double(), tiny_tokenizer()
    src = ["Hello there, friend.", "Why?", "ok 42"]
    low = ["Bonjour.", "Pourquoi?", "d'accord 42", "Hallo.", "Warum?"]
    low_src = [0, 1, 2, 0, 1]                      # low[i] translates src[low_src[i]]
    safe = ["A much longer prompt with many words in it!", "Fine, thanks."]
    texts = src + low + safe
    pairs = [(3 + i, j) for i, j in enumerate(low_src)]
    fused = probe.collect_fused(model, tok, texts, [0, 1], position=position, batch_size=4,
                                moments={"harm": [0, 1, 2], "safe": [8, 9]}, grams={"conv": [8, 9, 0]},
                                pairs={"pairs": pairs[:3], "val": pairs[3:]}, with_yty=["val"])
    harm = probe.collect(model, tok, src, [0, 1], position=position, batch_size=2)
    safe_m = probe.collect(model, tok, safe, [0, 1], position=position, batch_size=2)
    conv = probe.collect(model, tok, safe + src[:1], [0, 1], position="all", what=("mlp_inputs",))
    paired = probe.collect_paired(model, tok, low[:3], [src[j] for j in low_src[:3]], [0, 1], position=position)
    val = probe.collect_paired(model, tok, low[3:], [src[j] for j in low_src[3:]], [0, 1], position=position)
    val_src = probe.collect(model, tok, [src[j] for j in low_src[3:]], [0, 1], position=position,
                            what=("mlp_inputs",))
    close = dict(rtol=1e-10, atol=1e-10)
    for layer in (0, 1):
        f = fused[layer]
        for name, ref in (("harm", harm), ("safe", safe_m)):
            assert f[name].n == ref[layer]["activations"].n
            torch.testing.assert_close(f[name].mean, ref[layer]["activations"].mean, **close)
            torch.testing.assert_close(f[name].var, ref[layer]["activations"].var, **close)
        assert f["conv"].n == conv[layer]["mlp_inputs"].n
        torch.testing.assert_close(f["conv"].xtx, conv[layer]["mlp_inputs"].xtx, **close)
        for name, ref in (("pairs", paired), ("val", val)):
            assert f[name].n == ref[layer].n
            torch.testing.assert_close(f[name].xtx, ref[layer].xtx, **close)
            torch.testing.assert_close(f[name].xty, ref[layer].xty, **close)
        torch.testing.assert_close(f["val"].yty, val_src[layer]["mlp_inputs"].xtx, **close)
        assert f["pairs"].yty is None


def test_collect_fused_reads_each_text_once_and_keeps_pairs_in_one_batch():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        probe.collect_fused(model, tok, TEXTS + ["Bonjour."], [0], batch_size=2,
                            moments={"m": [0, 1, 2, 3]}, pairs={"p": [(4, 2), (1, 2)]})
    finally:
        handle.remove()
    assert sum(seen) == 5                         # 5 texts, 5 rows in all
    assert probe._units(5, {"p": [(4, 2), (1, 2)]}) == [[2, 4, 1], [0], [3]]
    with pytest.raises(ValueError, match="unique names"):
        probe.collect_fused(model, tok, TEXTS, [0], moments={"a": [0]}, grams={"a": [1]})
    with pytest.raises(ValueError, match="indexes outside texts"):
        probe.collect_fused(model, tok, TEXTS, [0], pairs={"p": [(0, 9)]})
    with pytest.raises(ValueError, match="with_yty=True"):
        probe.Gram(with_yty=True).update(torch.ones(2, 3))


def test_collect_fused_runs_the_shared_opening_once(fast_path_models):
    """Chat-templated texts share the template's opening: with share_prefix it is run once
    (fewer tokens fed) and every statistic equals the plain pass up to float32 round-off."""
    from mlsafe.evaluate.generate import format_chat

    words = ["Hello there, friend.", "Why?", "ok 42", "Bonjour.", "Pourquoi?", "A much longer prompt with many words!"]
    groups = dict(moments={"harm": [0, 1, 2]}, grams={"conv": [3, 4, 5, 0]}, pairs={"pairs": [(3, 0), (4, 1)]},
                  with_yty=["pairs"])
    for name, model, tok in fast_path_models:
        texts = format_chat(tok, words)
        fed = []
        handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: fed.append(a[0].numel()))
        try:
            plain = probe.collect_fused(model, tok, texts, [0, 1], batch_size=4, share_prefix=False, **groups)
            n_plain, fed[:] = sum(fed), []
            shared = probe.collect_fused(model, tok, texts, [0, 1], batch_size=4, **groups)
        finally:
            handle.remove()
        if "window-8" not in name:   # the 8-token window never fits the layout: the plain pass runs
            assert sum(fed) < n_plain, name
        close = dict(rtol=1e-4, atol=1e-5)
        for layer in (0, 1):
            p, s = plain[layer], shared[layer]
            assert s["harm"].n == p["harm"].n and s["conv"].n == p["conv"].n and s["pairs"].n == p["pairs"].n
            torch.testing.assert_close(s["harm"].mean, p["harm"].mean, **close)
            torch.testing.assert_close(s["conv"].xtx, p["conv"].xtx, **close)
            torch.testing.assert_close(s["pairs"].xty, p["pairs"].xty, **close)
            torch.testing.assert_close(s["pairs"].yty, p["pairs"].yty, **close)
