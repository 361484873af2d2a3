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
    with pytest.raises(ValueError, match="margin"):
        transfer.fit(model, tok, harmful, harmless, transfer.EditConfig(targets=["th"]))
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
