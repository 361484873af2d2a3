"""Baselines (mlsafe.baselines): cost formulas, refusal direction, LoRA fine-tune, the full run."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from mlsafe import arch, tiny, transfer
from mlsafe import evaluate as ev
from mlsafe.baselines import bench, cost, direction, finetune, run
from mlsafe.edit import fingerprint
from mlsafe.models import LoadedModel
from mlsafe.pipeline import Suite
from mlsafe.prompts import Prompt

LANGS3 = ("en", "th", "bn")
TOPICS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta", "lambda", "zeta", "rho", "tau"]


def _prompts(kind: str, first: int, n: int) -> list[Prompt]:
    """Parallel abstract prompts in three languages (harmful ones are placeholders)."""
    out = []
    for i in range(first, first + n):
        topic = f"{TOPICS[i % len(TOPICS)]} {i}"
        for lang in LANGS3:
            if kind == "harmful":
                out.append(Prompt(f"h{i}-{lang}", lang, f"[{lang}] forbidden request {topic} now", True, f"h{i}",
                                  response="sorry no" if lang == "en" else None))
            else:
                out.append(Prompt(f"s{i}-{lang}", lang, f"[{lang}] kind question {topic} please", False, f"s{i}",
                                  answer=str(i % 10), response=f"answer {i % 10}"))
    return out


def tiny_setup(layers: int = 3) -> tuple[LoadedModel, Suite]:
    """A tiny random Llama and a three-language suite (edit defaults loose enough for random weights)."""
    tok = tiny.build_tokenizer("llama")
    model = tiny.build_model("llama", tok, seed=0, layers=layers)
    suite = Suite("tiny", _prompts("harmful", 0, 12), _prompts("harmless", 0, 12), _prompts("harmful", 100, 4),
                  _prompts("harmless", 100, 4), ev.RefusalPhraseJudge(), {x: ["Sorry"] for x in LANGS3},
                  {x: ["Sure"] for x in LANGS3}, lambda r, a: a in r, max_new_tokens=3,
                  edit_defaults=dict(tau_mag=1.0, tau_stat=0.5, rank=4))
    return LoadedModel(model, tok, "tiny", "tiny"), suite


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return tiny_setup()


# ----------------------------------------------------------------------------- cost
def test_cost_formulas_on_known_cases(setup):
    lm, _ = setup
    assert cost.forward_flops(10, 3) == 60.0
    assert cost.train_flops(10, 3) == 180.0
    assert cost.gram_flops(5, 4) == 160.0
    # d=3, m=2, r=1: 2*9 + 27/3 + 9*2 + 2*3*4 + 9*2^3 + 2*3*2*1 + 9*1 = 18+9+18+24+72+12+9
    assert cost.solve_flops(3, 2, 1) == pytest.approx(162.0)
    with pytest.raises(ValueError, match="non-negative"):
        cost.forward_flops(-1, 3)
    # tied tiny Llama: every parameter is in a matmul (the embedding is the head)
    total = sum(p.numel() for p in lm.model.parameters())
    assert lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    assert cost.matmul_params(lm.model) == total
    texts = ["a b", "a"]
    assert cost.count_tokens(lm.tokenizer, texts) == sum(len(lm.tokenizer.encode(t, add_special_tokens=False))
                                                         for t in texts)


def test_edit_flops_count_the_scoring_passes_above_the_trunk(setup):
    """One whole unedited validation pass, then per scored candidate the layers from the lowest
    scored one up (mlsafe.trunk replays the rest): scoring higher layers costs less."""
    lm, suite = setup
    cfg = transfer.EditConfig(targets=["th"], **suite.edit_defaults)
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    report = transfer.FitReport(layer=1, n_neurons=4)

    def flops(layers):
        report.candidates = [{"layer": k, "n_neurons": 4, **({"val_gain_harmful": 0.0} if k in layers else {})}
                             for k in range(arch.n_layers(lm.model))]
        return run.edit_flops(lm.model, lm.tokenizer, anchors, cfg, report)
    base = flops([])
    val = [p for p in anchors.val_harmful if p.lang in ("th", "en")] + anchors.val_harmless
    whole = cost.forward_flops(cost.matmul_params(lm.model), run._tokens(lm.tokenizer, val))
    assert flops([0, 1]) == pytest.approx(base + 3 * whole)        # nothing below layer 0 to replay
    assert base + 2 * whole < flops([1, 2]) < base + 3 * whole      # two passes from layer 1 up


def test_matmul_counter_counts_the_rows_each_linear_layer_reads(setup):
    from mlsafe import probe

    model = setup[0].model
    ids = torch.randint(5, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings()
    with torch.no_grad():
        with cost.MatmulCounter() as whole:
            model(input_ids=ids)
        with cost.MatmulCounter() as last:             # the head reads one row per sequence
            model(input_ids=ids, logits_to_keep=1)
        with cost.MatmulCounter() as early, probe.capture(model, [0], stop_after_last=True):  # stops in layer 0
            model(input_ids=ids)
    assert whole.flops == 2.0 * 14 * linear
    assert last.flops == whole.flops - 2.0 * 12 * head.in_features * head.out_features
    per_block = (whole.flops - 2.0 * 14 * head.in_features * head.out_features) / arch.n_layers(model)
    assert 0 < early.flops < per_block
    with pytest.raises(RuntimeError, match="boom"), cost.MatmulCounter() as failed:
        raise RuntimeError("boom")
    with torch.no_grad():
        model(input_ids=ids)
    assert failed.flops == 0                            # its hook left with the error


@pytest.mark.parametrize("stats_pass", ["fused", "separate"])
def test_collect_flops_reads_each_prompt_group_once(setup, stats_pass):
    """One pass serves every candidate layer: only the Grams grow with the number of layers."""
    lm, suite = setup
    cfg = transfer.EditConfig(targets=["th"], stats_pass=stats_pass, **suite.edit_defaults)
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    one, three = (run.collect_flops(lm.model, lm.tokenizer, anchors, cfg, k) for k in (1, 3))
    per_layer = run.gram_flops(lm.model, lm.tokenizer, anchors, cfg, 1)
    assert per_layer > 0 and three - one == pytest.approx(2 * per_layer)
    assert run.gram_flops(lm.model, lm.tokenizer, anchors, cfg, 3) == pytest.approx(3 * per_layer)


def test_matmul_params_drops_an_untied_input_embedding():
    from tiny import tiny_model

    model = tiny_model("llama")
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is not emb
    assert cost.matmul_params(model) == sum(p.numel() for p in model.parameters()) - emb.numel()


# ----------------------------------------------------------------------------- direction
def _last_logits(lm, prompts):
    enc = transfer.chat_texts(lm.tokenizer, prompts)
    from mlsafe import probe

    batch = probe.encode_batch(lm.tokenizer, enc)
    with torch.no_grad():
        return lm.model(**batch).logits[:, -1]


def test_refusal_direction_is_the_mean_residual_difference(setup):
    lm, suite = setup
    harm = [p for p in suite.anchors_harmful if p.lang == "en"]
    safe = [p for p in suite.anchors_harmless if p.lang == "en"]
    dirs = direction.refusal_directions(lm.model, lm.tokenizer, harm, safe, [1])

    def mean_hidden(prompts):  # independent route: hidden_states[l + 1] is the output of layer l
        rows = []
        for p in prompts:
            ids = lm.tokenizer(transfer.chat_texts(lm.tokenizer, [p])[0], add_special_tokens=False,
                               return_tensors="pt")
            with torch.no_grad():
                rows.append(lm.model(**ids, output_hidden_states=True).hidden_states[2][0, -1].double())
        return torch.stack(rows).mean(0)

    assert torch.allclose(dirs[1], mean_hidden(harm) - mean_hidden(safe), atol=1e-4)


def test_actadd_changes_logits_inside_and_is_removed_on_exit(setup):
    lm, suite = setup
    prompts = suite.eval_harmful[:3]
    before = _last_logits(lm, prompts)
    hooks = [len(b._forward_hooks) for b in arch.blocks(lm.model)]
    vec = torch.ones(arch.d_model(lm.model))
    with direction.actadd(lm.model, 1, vec):
        inside = _last_logits(lm, prompts)
    assert not torch.allclose(inside, before)
    assert torch.equal(_last_logits(lm, prompts), before)
    assert [len(b._forward_hooks) for b in arch.blocks(lm.model)] == hooks
    with pytest.raises(RuntimeError), direction.actadd(lm.model, 1, vec):
        raise RuntimeError("inside")
    assert [len(b._forward_hooks) for b in arch.blocks(lm.model)] == hooks
    with pytest.raises(ValueError, match="d_model"):
        with direction.actadd(lm.model, 1, torch.ones(3)):
            pass
    with pytest.raises(ValueError, match="layer"):
        with direction.actadd(lm.model, 7, vec):
            pass


def test_orthogonalised_removes_the_direction_and_restores_exactly(setup):
    lm, _ = setup
    r = torch.randn(arch.d_model(lm.model), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fp = fingerprint(lm.model)
    r_hat = (r / r.norm()).float()
    with direction.orthogonalised(lm.model, r):
        down = arch.neuron_weight(lm.model, 0, "down")
        o_proj = arch.blocks(lm.model)[0].self_attn.o_proj.weight
        assert (down @ r_hat).abs().max() < 1e-5          # neurons write nothing along r
        assert (r_hat @ o_proj).abs().max() < 1e-5        # attention writes nothing along r
    assert fingerprint(lm.model) == fp
    with pytest.raises(ValueError, match="non-zero"):
        with direction.orthogonalised(lm.model, torch.zeros(arch.d_model(lm.model))):
            pass


# ----------------------------------------------------------------------------- fine-tune
def test_sft_examples_put_the_loss_on_the_response(setup):
    lm, suite = setup
    ex = finetune.sft_examples(lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, ["th"])
    n_harm = sum(1 for p in suite.anchors_harmful if p.lang == "th")
    assert len(ex) == n_harm + len(suite.anchors_harmless)
    first = lm.tokenizer.decode(ex[0].ids[ex[0].loss_from:])
    assert "sorry no" in first             # the Thai prompt learns the English parallel's refusal
    assert "forbidden" not in first        # and no prompt token carries loss
    with pytest.raises(ValueError, match="no harmful anchors"):
        finetune.sft_examples(lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, ["zh"])


def test_finetune_is_deterministic_lowers_its_loss_and_leaves_the_base_alone(setup):
    lm, suite = setup
    fp = fingerprint(lm.model)
    cfg = finetune.SFTConfig(steps=25, batch_size=8, lr=1e-2, seed=3)
    a = finetune.train_sft(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, ["th"], cfg)
    b = finetune.train_sft(lm.model, lm.tokenizer, suite.anchors_harmful, suite.anchors_harmless, ["th"], cfg)
    assert fingerprint(lm.model) == fp                      # hooks only; base weights untouched
    da, db = a.delta(), b.delta()
    assert set(da.deltas) == set(db.deltas) and len(da.deltas) == 3 * 3
    assert all(torch.equal(da.deltas[k], db.deltas[k]) for k in da.deltas)
    assert sum(a.losses[-5:]) / 5 < 0.8 * sum(a.losses[:5]) / 5
    with da.applied(lm.model):
        assert fingerprint(lm.model) != fp
    assert fingerprint(lm.model) == fp
    assert 0 < da.fraction_of_parameters(lm.model) < 1
    with pytest.raises(ValueError, match="steps"):
        finetune.SFTConfig(steps=-1)


# ----------------------------------------------------------------------------- full run
def test_run_baselines_writes_well_formed_rows(setup, tmp_path):
    lm, suite = setup
    fp = fingerprint(lm.model)
    df = run.run_baselines(lm, suite, "th", 0, tmp_path, n_random=1,
                           sft=finetune.SFTConfig(steps=4, batch_size=4))
    assert fingerprint(lm.model) == fp                      # every method was reverted
    assert list(df.columns) == list(run.COLUMNS)
    assert set(df.method) == set(run.METHODS)
    assert (df.groupby("method").lang.apply(sorted) == [sorted(LANGS3)] * len(run.METHODS)).all()
    assert df[["asr", "utility", "over_refusal"]].apply(lambda c: c.between(0, 1)).all().all()
    assert df.fraction_of_parameters.between(0, 1).all() and (df.seconds >= 0).all()
    fitted = df[~df.method.isin(["none"])]
    assert (fitted.flops > 0).all() and (fitted.seconds > 0).all()
    act = df[df.method == "actadd_target"].set_index("lang")
    none = df[df.method == "none"].set_index("lang")
    assert act.loc["en", "margin"] == none.loc["en", "margin"]   # not steered outside the targets
    assert (df[df.method.str.startswith("actadd")].fraction_of_parameters == 0).all()
    edit = df[df.method == "edit"].iloc[0]
    assert edit.flops > df[df.method == "ridge_gamma0"].iloc[0].flops   # selection passes cost extra
    back = pd.read_csv(tmp_path / "baselines.csv")
    assert len(back) == len(df) and list(back.columns) == list(run.COLUMNS)
    assert (tmp_path / "baselines_meta.json").is_file()
    with pytest.raises(ValueError, match="unknown methods"):
        run.run_baselines(lm, suite, "th", methods=["edit", "magic"])


def test_registry_order_and_a_shared_context_that_is_fitted_once(setup, monkeypatch):
    from mlsafe import ablations, pipeline

    lm, suite = setup
    assert run.METHODS == tuple(run.BASELINES) and run.METHODS[:2] == ("none", "edit")
    assert ablations.ABLATIONS == tuple(ablations.REGISTRY)
    with pytest.raises(ValueError, match="already registered"):
        run.register_baseline("edit")(lambda b: None)
    with pytest.raises(ValueError, match="already registered"):
        ablations.register_ablation("rank")(lambda t: None)
    methods = ["edit", "ridge_gamma0", "random_neurons"]
    fresh = run.run_baselines(lm, suite, "th", 0, methods=methods, n_random=1)
    ctx = pipeline.Context.fit(lm, suite, ["th"], 0)
    fits = []
    real_fit = transfer.fit
    monkeypatch.setattr(transfer, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    shared = run.run_baselines(lm, suite, "th", 0, methods=methods, n_random=1, context=ctx)
    ab = ablations.run_ablations(lm, suite, "th", 0, ablations=["rank"], ranks=(2,), context=ctx)
    assert fits == []                                            # neither fitted the edit again
    assert (shared[shared.method == "edit"].seconds == ctx.fit_seconds).all()
    assert set(ab.ablation) == {"rank"} and (ab.layer == ctx.report.layer).all()
    pd.testing.assert_frame_equal(shared.drop(columns="seconds"), fresh.drop(columns="seconds"))


def test_random_control_sets_are_seeded_sized_and_disjoint_when_asked():
    from mlsafe.controls import control_seed, random_control_sets
    from mlsafe.neurons import random_like

    s = torch.tensor([1, 5, 9])
    draws = random_control_sets(s, 12, seed=2, n=3, disjoint=True)
    assert len(draws) == 3 and all(d.numel() == 3 and not set(d.tolist()) & {1, 5, 9} for d in draws)
    assert control_seed(2, 1) == 20_001
    assert torch.equal(draws[1], random_like(s, 12, torch.Generator().manual_seed(20_001), disjoint=True))
    assert all(torch.equal(a, b) for a, b in zip(draws, random_control_sets(s, 12, 2, 3, disjoint=True)))


def test_bench_cost_reports_a_consistent_ratio(setup):
    lm, suite = setup
    res = bench.bench_cost(lm, suite, ["th"], 0, schedule=(2, 4), sft=finetune.SFTConfig(batch_size=4))
    steps = [c["steps"] for c in res["curve"]]
    assert steps == [2, 4][:len(steps)]
    last = res["curve"][-1]   # reached: the same ASR and the same validation margin as the edit
    assert res["reached"] == (last["asr"] <= res["edit"]["asr"] and last["val_margin"] >= res["edit"]["val_margin"])
    assert res["preset"] == "paper" and res["train"]["val_margin"] == last["val_margin"]
    assert res["ratio_seconds"] == pytest.approx(res["train"]["seconds"] / res["edit"]["seconds"])
    assert res["ratio_flops"] == pytest.approx(res["train"]["flops"] / res["edit"]["flops"])
    # FLOPs as fed: training's grow with its steps; both sides keep the formula's estimate beside them
    assert 0 < res["curve"][0]["flops"] < res["curve"][-1]["flops"] or len(res["curve"]) == 1
    assert res["edit"]["flops"] > 0 and res["edit"]["flops_estimate"] > 0 and res["train"]["flops_estimate"] > 0
    assert "ratio training / edit" in bench.format_report(res)
    # the harmless side, recorded beside each point: KL >= 0 (and > 0: both change weights)
    assert all(c["harmless_kl"] > 0 and math.isfinite(c["harmless_margin_gain"]) for c in res["curve"])
    assert res["edit"]["harmless_kl"] > 0 and res["train"]["harmless_kl"] == last["harmless_kl"]
    e = res["edit"]
    assert e["seconds_layer_given"] == pytest.approx(sum(e["stage_seconds"][k] for k in ("statistics", "neurons", "solve")))
    assert 0 < e["seconds_layer_given"] <= e["seconds"]
    assert res["ratio_seconds_layer_given"] == pytest.approx(res["train"]["seconds"] / e["seconds_layer_given"])
    assert "with the edit's layer given" in bench.format_report(res)
    with pytest.raises(ValueError, match="increasing"):
        bench.bench_cost(lm, suite, ["th"], schedule=(4, 2))


def test_pareto_front_on_a_known_case():
    rows = [("A", 0.5, 0.9), ("B", 0.2, 0.9), ("C", 0.2, 0.5), ("D", 0.6, 0.95)]
    df = pd.DataFrame([{"method": m, "lang": lang, "asr": a, "utility": u, "over_refusal": 0.0}
                       for m, a, u in rows for lang in ("th", "en")])
    df.loc[df.lang == "en", "asr"] = 0.0                    # other languages must not count
    front = run.pareto_front(df, ["th"]).set_index("method")
    assert front.on_front.to_dict() == {"A": False, "B": True, "C": False, "D": True}
    assert front.loc["A", "asr"] == 0.5
    assert "dominates_edit" not in front                   # no edit row, no comparison
    df.loc[df.method == "A", "method"] = "edit"
    vs = run.pareto_front(df, ["th"]).set_index("method")
    assert vs.dominates_edit.to_dict() == {"edit": False, "B": True, "C": False, "D": False}
    assert vs.lower_asr_than_edit.to_dict() == {"edit": False, "B": True, "C": True, "D": False}
    with pytest.raises(ValueError, match="no rows"):
        run.pareto_front(df, ["bn"])
