"""The whole recipe (mlsafe.transfer) on tiny random Llama and Qwen2 models."""

from __future__ import annotations

import pytest
import torch

from mlsafe import arch, probe, tiny, transfer
from mlsafe.prompts import Prompt

TOPICS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta", "lambda", "zeta",
          "rho", "tau"]


def _anchors():
    """Parallel abstract prompts: harmful ones share a marker word, harmless ones another."""
    harmful, harmless = [], []
    for i, topic in enumerate(TOPICS):
        for lang in ("en", "th", "bn"):
            harmful.append(Prompt(f"h{i}-{lang}", lang, f"[{lang}] forbidden request {topic} now", True,
                                  f"h{i}", response="sorry no" if lang == "en" else None))
            harmless.append(Prompt(f"s{i}-{lang}", lang, f"[{lang}] kind question {topic} please", False,
                                   f"s{i}", answer=str(i), response=f"answer {i}"))
    return harmful, harmless


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_lm(request):
    tok = tiny.build_tokenizer(request.param)
    model = tiny.build_model(request.param, tok, seed=0, layers=3)
    return model, tok


def _gate_rows(model, tok, prompts, layer, idx):
    """Gate pre-activations of neurons idx at the last prompt token: X W_S, [N, m]."""
    texts = transfer.chat_texts(tok, prompts)
    enc = probe.encode_batch(tok, texts)
    with probe.capture(model, [layer]) as cap, torch.no_grad():
        cap.forward(**enc)
    x = probe.select_positions(cap.mlp_inputs[layer], enc["attention_mask"], "last").double()
    return x @ arch.neuron_weight(model, layer, "gate").detach()[idx].T.double()


def test_fit_closes_the_gap_on_the_edited_neurons(tiny_lm):
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    cfg = transfer.EditConfig(targets=["th", "bn"], layer=1, rank=4, gamma=0.1, lam=1e-4,
                              tau_mag=1.0, tau_stat=0.5, val_fraction=0.0)
    edit, report = transfer.fit(model, tok, harmful, harmless, cfg)
    assert edit.layer == report.layer == 1
    assert edit.neurons.numel() == report.n_neurons > 0
    assert torch.equal(edit.neurons, report.neuron_sets[1].s_safety)
    for module in ("gate", "up"):
        assert torch.linalg.matrix_rank(edit.delta(module)) <= 4
    low = [p for p in harmful if p.lang != "en"]
    src = [next(q for q in harmful if q.lang == "en" and q.parallel_id == p.parallel_id) for p in low]
    target = _gate_rows(model, tok, src, 1, edit.neurons)
    gap_before = (_gate_rows(model, tok, low, 1, edit.neurons) - target).norm()
    with edit.applied(model):
        gap_after = (_gate_rows(model, tok, low, 1, edit.neurons) - target).norm()
    assert gap_after < 0.5 * gap_before


def test_auto_layer_scores_every_candidate_and_picks_the_best(tiny_lm):
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    first = tok.encode("sorry", add_special_tokens=False)[0]

    def margin(m, prompts):  # a stand-in margin: log-prob of the first token of "sorry"
        texts = transfer.chat_texts(tok, prompts)
        enc = probe.encode_batch(tok, texts)
        with torch.no_grad():
            logits = m(**enc).logits[:, -1].double()
        return torch.log_softmax(logits, -1)[:, first]

    cfg = transfer.EditConfig(targets=["th"], layer="auto", rank=2, tau_mag=1.0, tau_stat=0.5,
                              val_fraction=0.34)
    edit, report = transfer.fit(model, tok, harmful, harmless, cfg, margin=margin)
    scored = [c for c in report.candidates if c["n_neurons"] > 0]
    assert [c["layer"] for c in report.candidates] == [0, 1, 2]
    assert scored and all("val_gain_harmful" in c for c in scored)
    assert report.layer == max(scored, key=lambda c: c["score"])["layer"] == edit.layer


def test_fit_refuses_bad_input(tiny_lm):
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    with pytest.raises(ValueError, match="targets"):
        transfer.EditConfig(targets=["en"])
    with pytest.raises(ValueError, match="out of range"):
        transfer.fit(model, tok, harmful, harmless, transfer.EditConfig(targets=["th"], layer=9, val_fraction=0))
    with pytest.raises(ValueError, match="targets"):
        transfer.EditConfig(targets=["th!"])  # any well-formed code is a target, a malformed one is not
    assert transfer.EditConfig(targets=["sw"]).targets == ["sw"]
    only_en = [p for p in harmful if p.lang == "en"]
    with pytest.raises(ValueError, match="no harmful anchors"):
        transfer.fit(model, tok, only_en, harmless, transfer.EditConfig(targets=["th"], layer=0, val_fraction=0))


def test_split_keeps_translations_together():
    harmful, harmless = _anchors()
    a = transfer.split_anchors(harmful, harmless, 0.25, seed=3)
    fit_ids = {p.parallel_id for p in a.fit_harmful}
    val_ids = {p.parallel_id for p in a.val_harmful}
    assert fit_ids and val_ids and not fit_ids & val_ids
    assert len(a.fit_harmful) + len(a.val_harmful) == len(harmful)
    assert transfer.split_anchors(harmful, harmless, 0.25, seed=3) == a


def _margin_fn(tok):
    first = tok.encode("sorry", add_special_tokens=False)[0]

    def margin(m, prompts):  # a stand-in margin: log-prob of the first token of "sorry"
        enc = probe.encode_batch(tok, transfer.chat_texts(tok, prompts))
        with torch.no_grad():
            logits = m(**enc).logits[:, -1].double()
        return torch.log_softmax(logits, -1)[:, first]
    return margin


def test_fused_statistics_pass_equals_the_separate_passes():
    tok = tiny.build_tokenizer("llama")
    model = tiny.build_model("llama", tok, seed=0, layers=3).double()  # float64: round-off only
    harmful, harmless = _anchors()
    anchors = transfer.split_anchors(harmful, harmless, 0.34, seed=0)
    out = {}
    for mode in ("separate", "fused"):
        cfg = transfer.EditConfig(targets=["th", "bn"], stats_pass=mode, batch_size=5)
        out[mode] = transfer.collect_stats(model, tok, anchors, cfg, [0, 2], validation_pairs=True)
    close = dict(rtol=1e-10, atol=1e-10)
    for layer in (0, 2):
        a, b = out["separate"][layer], out["fused"][layer]
        for name in ("acts_harm", "acts_safe"):
            assert getattr(a, name).n == getattr(b, name).n > 0
            torch.testing.assert_close(getattr(a, name).mean, getattr(b, name).mean, **close)
            torch.testing.assert_close(getattr(a, name).var, getattr(b, name).var, **close)
        for name in ("paired", "safe", "val"):
            ga, gb = getattr(a, name), getattr(b, name)
            assert ga.n == gb.n > 0
            for t in ("xtx", "xty", "yty"):
                if getattr(ga, t) is None:   # fused keeps the fit pairs' X_en^T X_en too (pair_gap_energy)
                    assert (getattr(gb, t) is not None) == (name == "paired" and t == "yty")
                else:
                    torch.testing.assert_close(getattr(ga, t), getattr(gb, t), **close)
        # the fused pairs' X_en^T X_en equals a separate pass over the English originals alone
        low, src = transfer.parallel_pairs(anchors.fit_harmful, "en", ["th", "bn"])
        en = probe.collect(model, tok, transfer.chat_texts(tok, src), [layer], what=("mlp_inputs",))
        torch.testing.assert_close(b.paired.yty, en[layer]["mlp_inputs"].xtx, **close)
        energy = transfer.pair_gap_energy(model, layer, b)
        w = arch.neuron_weight(model, layer, "gate").detach().double()
        g = b.paired
        direct = torch.stack([wj @ (en[layer]["mlp_inputs"].xtx - g.xty - g.xty.T + g.xtx) @ wj for wj in w]) / g.n
        torch.testing.assert_close(energy, direct, **close)
        assert (energy >= -1e-9).all() and energy.max() > 0
    with pytest.raises(ValueError, match="fused"):
        transfer.pair_gap_energy(model, 0, out["separate"][0])


def test_predicted_gap_closed_equals_the_gap_the_edited_model_closes(tiny_lm):
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    cfg = transfer.EditConfig(targets=["th", "bn"], layer=1, rank=2, tau_mag=1.0, tau_stat=0.5,
                              val_fraction=0.34, stats_pass="fused")
    anchors = transfer.split_anchors(harmful, harmless, cfg.val_fraction, cfg.seed)
    st = transfer.collect_stats(model, tok, anchors, cfg, [1], validation_pairs=True)[1]
    idx = transfer.neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe, tau_mag=1.0,
                                                       tau_stat=0.5).s_safety
    assert idx.numel() > 0
    edit = transfer.build_edit(model, 1, idx, st, cfg)
    predicted = transfer.predicted_gap_closed(model, edit, st)
    low = [p for p in anchors.val_harmful if p.lang != "en"]
    src = [next(q for q in anchors.val_harmful if q.lang == "en" and q.parallel_id == p.parallel_id) for p in low]

    def rows(prompts, module):
        enc = probe.encode_batch(tok, transfer.chat_texts(tok, prompts))
        with probe.capture(model, [1]) as cap, torch.no_grad():
            cap.forward(**enc)
        x = probe.select_positions(cap.mlp_inputs[1], enc["attention_mask"], "last").double()
        return x @ arch.neuron_weight(model, 1, module).detach()[idx].T.double()

    targets = {mod: rows(src, mod) for mod in cfg.modules}
    gap = sum(float(((rows(low, mod) - targets[mod]) ** 2).sum()) for mod in cfg.modules)
    with edit.applied(model):
        resid = sum(float(((rows(low, mod) - targets[mod]) ** 2).sum()) for mod in cfg.modules)
    assert 0.0 < predicted < 1.0
    assert predicted == pytest.approx(1.0 - resid / gap, rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="validation_pairs=True"):
        transfer.predicted_gap_closed(model, edit, transfer.collect_stats(model, tok, anchors, cfg, [1])[1])
    # the same quantity on the fit pairs: the in-sample R^2
    fit_r2 = transfer.gap_closed(model, edit, st.paired)
    fit_low, fit_src = transfer.parallel_pairs(anchors.fit_harmful, cfg.source, cfg.targets)
    targets = {mod: rows(fit_src, mod) for mod in cfg.modules}
    gap = sum(float(((rows(fit_low, mod) - targets[mod]) ** 2).sum()) for mod in cfg.modules)
    with edit.applied(model):
        resid = sum(float(((rows(fit_low, mod) - targets[mod]) ** 2).sum()) for mod in cfg.modules)
    assert fit_r2 == pytest.approx(1.0 - resid / gap, rel=1e-4, abs=1e-5) and fit_r2 > 0
    with pytest.raises(ValueError, match="with_yty"):
        transfer.gap_closed(model, edit, probe.Gram())


def test_predicted_layer_selection_confirms_the_top_candidates_by_margins(tiny_lm):
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    margin = _margin_fn(tok)
    base = dict(targets=["th"], layer="auto", rank=2, tau_mag=1.0, tau_stat=0.5, val_fraction=0.34)
    _, by_margins = transfer.fit(model, tok, harmful, harmless, transfer.EditConfig(**base), margin=margin)
    # confirming every candidate is the margins selection, with the same scores
    _, full = transfer.fit(model, tok, harmful, harmless,
                           transfer.EditConfig(**base, layer_selection="predicted", confirm_top=3), margin=margin)
    assert full.layer == by_margins.layer
    for a, b in zip(by_margins.candidates, full.candidates):
        assert a["score"] == pytest.approx(b["score"], rel=1e-9, abs=1e-12)
    # confirming one: the best-predicted layer, scored by margins; the others are unscored
    edit, one = transfer.fit(model, tok, harmful, harmless,
                             transfer.EditConfig(**base, layer_selection="predicted", confirm_top=1,
                                                 stats_pass="fused"), margin=margin)
    scored = [c for c in one.candidates if c["n_neurons"] > 0]
    top = max(scored, key=lambda c: c["predicted_gap_closed"])
    assert one.layer == edit.layer == top["layer"] and top["confirmed"]
    assert all(c["score"] == float("-inf") for c in scored if c is not top)
    assert set(one.stage_seconds) == {"statistics", "neurons", "solve", "predict", "margins"}
    with pytest.raises(ValueError, match="layer_selection must be one of"):
        transfer.EditConfig(targets=["th"], layer_selection="fast")
    with pytest.raises(ValueError, match="stats_pass must be one of"):
        transfer.EditConfig(targets=["th"], stats_pass="one")


def test_fit_defaults_margin_and_config_and_takes_the_anchor_pair(tiny_lm):
    """transfer.fit(model, tokenizer, anchors.load(...)): the (harmful, harmless) pair, the
    default margin strings and EditConfig(targets=<the anchors' non-English languages>)."""
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    edit, report = transfer.fit(model, tok, (harmful, harmless))
    assert edit.hparams["targets"] == sorted({p.lang for p in harmful} - {"en"})
    assert report.layer in range(len(list(model.parameters())))


@pytest.mark.parametrize("neuron_set,k", [("all", None), ("gap", 7), ("cohens_d", 5)])
def test_neuron_set_choices(tiny_lm, neuron_set, k):
    """cfg.neuron_set picks the edited rows: every neuron, the top-k pair-gap energy, or top-k d."""
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    cfg = transfer.EditConfig(targets=["th", "bn"], layer=1, rank=2, stats_pass="fused",
                              neuron_set=neuron_set, neuron_k=k)
    edit, report = transfer.fit(model, tok, harmful, harmless, cfg, margin=_margin_fn(tok))
    n = arch.d_ff(model)
    assert edit.neurons.numel() == (n if k is None else k) == report.n_neurons
    if neuron_set == "gap":
        energy = transfer.pair_gap_energy(model, 1, report.stats)
        assert set(edit.neurons.tolist()) == set(energy.topk(k).indices.tolist())
    if neuron_set == "cohens_d":
        d = report.neuron_sets[1].cohens_d
        assert set(edit.neurons.tolist()) == set(d.topk(k).indices.tolist())


def test_neuron_set_config_is_checked():
    with pytest.raises(ValueError, match="neuron_set must be"):
        transfer.EditConfig(targets=["th"], neuron_set="random")
    with pytest.raises(ValueError, match="neuron_k"):
        transfer.EditConfig(targets=["th"], neuron_set="gap", stats_pass="fused")
    with pytest.raises(ValueError, match="neuron_k"):
        transfer.EditConfig(targets=["th"], neuron_k=4)
    with pytest.raises(ValueError, match="fused"):
        transfer.EditConfig(targets=["th"], neuron_set="gap", neuron_k=4)


def _fit_pairs(model, tok, layer=1, gamma=0.1, lam=1e-3, rank=16):
    """Fused statistics at `layer`, 16 top pair-gap neurons and the fit pairs' MLP inputs."""
    harmful, harmless = _anchors()
    cfg = transfer.EditConfig(targets=["th", "bn"], layer=layer, rank=rank, gamma=gamma, lam=lam,
                              val_fraction=0.0, stats_pass="fused")
    anchors = transfer.split_anchors(harmful, harmless, cfg.val_fraction, cfg.seed)
    st = transfer.collect_stats(model, tok, anchors, cfg, [layer])[layer]
    idx = transfer.pair_gap_energy(model, layer, st).topk(16).indices.sort().values
    low, src = transfer.parallel_pairs(anchors.fit_harmful, cfg.source, cfg.targets)
    x_low, x_src = transfer.pair_inputs(model, tok, low, src, layer, cfg)
    return cfg, anchors, st, idx, low, x_low, x_src


def test_pair_inputs_are_the_rows_of_the_pair_statistics(tiny_lm):
    model, tok = tiny_lm
    _, _, st, _, low, x_low, x_src = _fit_pairs(model, tok)
    assert x_low.shape == x_src.shape == (len(low), arch.d_model(model)) and x_low.dtype == torch.float64
    scale = float(st.paired.xtx.abs().max())
    assert torch.allclose(x_low.T @ x_low, st.paired.xtx.cpu(), atol=1e-4 * scale)
    assert torch.allclose(x_low.T @ x_src, st.paired.xty.cpu(), atol=1e-4 * scale)


def test_pair_offset_moves_the_target_by_the_given_shifts(tiny_lm):
    """The lead-4 option: target D_S' = (X_en - X_low - O) W_S, O's rows the shift of each pair's language."""
    model, tok = tiny_lm
    _, _, st, idx, low, x_low, x_src = _fit_pairs(model, tok)
    langs = [p.lang for p in low]
    shifts = transfer.mean_pair_shifts(x_low, x_src, langs)
    assert set(shifts) == {"th", "bn"}
    th = [i for i, lang in enumerate(langs) if lang == "th"]
    assert torch.allclose(shifts["th"], (x_src[th] - x_low[th]).mean(0))
    offset = transfer.pair_offset(x_low, langs, shifts)
    o = torch.stack([shifts[lang] for lang in langs])
    assert torch.allclose(offset, x_low.T @ o)
    for module in ("gate", "up"):
        w_s = arch.neuron_weight(model, 1, module).detach()[idx].T.double()
        plain = transfer.edit_gram(model, 1, module, idx, st)
        moved = transfer.edit_gram(model, 1, module, idx, st, pair_offset=offset)
        assert torch.equal(moved.xtx_low, plain.xtx_low) and torch.equal(moved.xtx_safe, plain.xtx_safe)
        assert torch.allclose(moved.xtd, plain.xtd - offset @ w_s / st.paired.n)
    with pytest.raises(ValueError, match="no shift"):
        transfer.pair_offset(x_low, langs, {"th": shifts["th"]})


def test_up_given_gate_changes_only_up_rows_and_lowers_the_activation_fit(tiny_lm):
    """The lead-5 option: gate's rows as before, up's fitted after them to the English activations."""
    model, tok = tiny_lm
    cfg, _, st, idx, _, x_low, x_src = _fit_pairs(model, tok, rank=16)   # rank 16 = |S|: the exact minimiser
    plain = transfer.build_edit(model, 1, idx, st, cfg)
    given = transfer.build_edit(model, 1, idx, st, cfg, up_given_gate=(x_low, x_src))
    assert torch.equal(given.factors["gate"][0], plain.factors["gate"][0])
    assert torch.equal(given.factors["gate"][1], plain.factors["gate"][1])
    assert given.hparams["up_fit"].startswith("given the edited gate") and "up_fit" not in plain.hparams
    weights = {}
    for name, edit in (("plain", plain), ("given", given)):
        with edit.applied(model):
            weights[name] = {m: arch.neuron_weight(model, 1, m).detach().clone() for m in ("gate", "up")}
    assert torch.equal(weights["plain"]["gate"], weights["given"]["gate"])
    rows_differ = (weights["plain"]["up"] != weights["given"]["up"]).any(-1)
    assert rows_differ.nonzero().flatten().tolist() == idx.tolist()   # only up's rows of S move

    dw_g = plain.delta("gate")
    safe = st.safe.xtx.cpu() / st.safe.n

    def objective(dw_u):   # what up_factors_given_gate minimises: activation fit + gamma and lambda terms
        fit = transfer.activation_residual(model, 1, idx, dw_g, dw_u, x_low, x_src)
        return fit + cfg.gamma * float((dw_u * (safe @ dw_u)).sum()) + cfg.lam * float((dw_u ** 2).sum())

    assert objective(given.delta("up")) < objective(plain.delta("up"))
    assert transfer.activation_residual(model, 1, idx, dw_g, given.delta("up"), x_low, x_src) \
        < transfer.activation_residual(model, 1, idx, dw_g, plain.delta("up"), x_low, x_src)
    perturbed = given.delta("up") + 1e-3 * torch.randn(given.delta("up").shape, generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.float64)
    assert objective(given.delta("up")) < objective(perturbed)     # a minimum, not just an improvement
    low_rank = transfer.build_edit(model, 1, idx, st, transfer.EditConfig(**{**cfg.__dict__, "rank": 2}),
                                   up_given_gate=(x_low, x_src))
    assert torch.linalg.matrix_rank(low_rank.delta("up")) <= 2
    with pytest.raises(ValueError, match="modules"):
        transfer.build_edit(model, 1, idx, st, transfer.EditConfig(**{**cfg.__dict__, "modules": ("up",)}),
                            up_given_gate=(x_low, x_src))
    with pytest.raises(ValueError, match="pair_offset"):
        transfer.build_edit(model, 1, idx, st, cfg, up_given_gate=(x_low, x_src),
                            pair_offset=torch.zeros(x_low.shape[1], x_low.shape[1]))


def test_decision_weight_counts_the_decision_rows_w_times_in_x_safe(tiny_lm):
    model, tok = tiny_lm
    harmful, harmless = _anchors()
    kw = dict(targets=["th", "bn"], layer=1, rank=2, tau_mag=1.0, tau_stat=0.5, val_fraction=0.34, stats_pass="fused")
    plain, heavy = transfer.EditConfig(**kw), transfer.EditConfig(**kw, decision_weight=10.0)
    anchors = transfer.split_anchors(harmful, harmless, plain.val_fraction, plain.seed)
    st1 = transfer.collect_stats(model, tok, anchors, plain, [1])[1]
    st = transfer.collect_stats(model, tok, anchors, heavy, [1])[1]
    assert st1.decision is None
    conversations = anchors.fit_harmless + [p for p in anchors.fit_harmful if p.lang == "en"]
    x_dec = transfer.prompt_inputs(model, tok, conversations, 1, plain)       # the last prompt token of each
    assert st.decision.n == len(conversations)
    torch.testing.assert_close(st.decision.xtx, x_dec.T @ x_dec, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(st.safe.xtx, st1.safe.xtx)                      # X_safe itself unchanged
    g = transfer.edit_gram(model, 1, "gate", torch.arange(4), st, decision_weight=10.0)
    n = st.safe.n + 9 * len(conversations)
    torch.testing.assert_close(g.xtx_safe, (st.safe.xtx + 9 * st.decision.xtx).cpu() / n)
    idx = torch.arange(0, 12)
    e1, e10 = transfer.build_edit(model, 1, idx, st, plain), transfer.build_edit(model, 1, idx, st, heavy)
    assert e10.hparams["decision_weight"] == 10.0 and "decision_weight" not in e1.hparams
    assert not torch.allclose(e1.delta("gate"), e10.delta("gate"))            # the weight changes the solve
    with pytest.raises(ValueError, match="decision rows' Gram"):
        transfer.edit_gram(model, 1, "gate", idx, st1, decision_weight=10.0)
    with pytest.raises(ValueError, match="stats_pass='fused'"):
        transfer.EditConfig(**{**kw, "stats_pass": "separate"}, decision_weight=2.0)
    with pytest.raises(ValueError, match=">= 1"):
        transfer.EditConfig(**kw, decision_weight=0.5)
