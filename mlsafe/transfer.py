"""The whole recipe (paper Algorithm 1): model + parallel anchors -> one SparseEdit.

Steps, for a source language (English) and one or several target languages stacked
into one X_low as the paper does:

1. Split the anchors by `parallel_id` into a fitting part and a validation part.
2. Safety neurons (Sec. 3.1, eq. 13-16): per candidate layer, the English safety set
   S = S_mag | S_stat from activation moments on harmful vs harmless English prompts.
3. Statistics of Theorem 4.1 at each candidate layer, streamed in float64:
   X_low^T X_low and X_low^T X_en from target-language harmful prompts paired with their
   English originals (so X_low^T D_S = (X_low^T X_en - X_low^T X_low) W_S), and
   X_safe^T X_safe from every token of the conversations to preserve: harmless
   conversations in all languages (prompt + answer) and English harmful prompts with
   their refusals. (The edit acts at every position, so every position it must not
   disturb is protected.)
4. Solve (Theorem 4.1) for each module in `modules` (gate and/or up rows of S).
5. Layer (OPEN in the paper): with ``layer="auto"`` each candidate layer's edit is scored
   on the validation anchors by the refusal margin it adds on target-language harmful
   prompts minus the margin it adds on harmless prompts (a false-refusal penalty); the
   best layer wins and every candidate's score is recorded. With
   ``layer_selection="predicted"`` the candidates are first ranked by the closed-form
   fraction of the validation pairs' safety gap ||D_S||^2 their edit closes (from
   validation-pair Gram matrices streamed in the same pass, `predicted_gap_closed`), and
   only the top ``confirm_top`` are scored by margins. The unedited validation pass records
   the input of the lowest scored layer (mlsafe.trunk), and each candidate's pass replays
   it: the layers below, which no candidate edits, run once.

Statistics pass: ``stats_pass="separate"`` (default, the committed results' path) runs
four collectors (English harmful prompts are read twice); ``stats_pass="fused"`` reads
every prompt once (`probe.collect_fused`), each English harmful prompt in one batch with
its translations. Both give the same statistics up to the model's batch-padding round-off.

Scaling (OPEN in the paper, which reports no gamma or lambda): the Gram matrices are
normalised per row, Q = X_low^T X_low / N_low + gamma X_safe^T X_safe / N_safe + lam I,
and X_low^T D / N_low, so gamma and lam do not depend on how many prompts or tokens
were collected. This equals the paper's eq. 4-8 with gamma' = gamma N_low / N_safe and
lambda' = lam N_low.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mlsafe import arch, neurons, probe, solver
from mlsafe.edit import Fingerprints, SparseEdit, fingerprint
from mlsafe.langs import LANGS, SOURCE, parse_codes
from mlsafe.prompts import Prompt
from mlsafe.trunk import Trunk

MarginFn = Callable[[torch.nn.Module, list[Prompt]], torch.Tensor]
SOLVERS = ("whitened", "naive", "nullspace", "ridge")
STATS_PASSES = ("separate", "fused")
LAYER_SELECTIONS = ("margins", "predicted")
#: Which neurons a layer's edit rewrites: "safety" the paper's S = S_mag | S_stat (eq. 13-16);
#: "all" every neuron of the layer; "gap" the `neuron_k` neurons whose pre-activations sit
#: farthest from English on the fit pairs (pair_gap_energy); "cohens_d" the top `neuron_k` by d.
NEURON_SETS = ("safety", "all", "gap", "cohens_d")


@dataclass
class EditConfig:
    """Hyper-parameters of one edit. Defaults are this project's choices where the paper is OPEN."""

    targets: Sequence[str]
    source: str = SOURCE
    layer: int | str = "auto"
    candidate_layers: Sequence[int] | None = None
    modules: tuple[str, ...] = ("gate", "up")
    rank: int = 8
    gamma: float = 1.0
    lam: float = 1e-2
    tau_mag: float = 2.0
    tau_stat: float = 1.0
    position: str = "last"
    solver: str = "whitened"
    nullspace_threshold: float = 1e-3
    val_fraction: float = 0.25
    seed: int = 0
    batch_size: int = 16
    stats_pass: str = "separate"
    layer_selection: str = "margins"
    confirm_top: int = 2
    neuron_set: str = "safety"
    neuron_k: int | None = None
    #: weight of the decision-position rows in X_safe^T X_safe (issue 13): each preserved
    #: conversation's prompt read at `position` counts this many times among its tokens; 1 is
    #: the paper's X_safe (every token alike). Needs stats_pass="fused".
    decision_weight: float = 1.0

    def __post_init__(self):
        self.targets = list(self.targets)
        self.modules = tuple(self.modules)
        try:  # any language code: the paper's eight have built-in data, others come with the anchors
            self.targets = parse_codes(self.targets, source=self.source)
        except ValueError:
            raise ValueError(f"targets must be non-source language codes (e.g. {', '.join(LANGS[1:4])}), "
                             f"got {self.targets}") from None
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.stats_pass not in STATS_PASSES:
            raise ValueError(f"stats_pass must be one of {STATS_PASSES}, got {self.stats_pass!r}")
        if self.layer_selection not in LAYER_SELECTIONS:
            raise ValueError(f"layer_selection must be one of {LAYER_SELECTIONS}, got {self.layer_selection!r}")
        if not (isinstance(self.confirm_top, int) and self.confirm_top >= 1):
            raise ValueError(f"confirm_top must be an integer >= 1, got {self.confirm_top!r}")
        if self.neuron_set not in NEURON_SETS:
            raise ValueError(f"neuron_set must be one of {NEURON_SETS}, got {self.neuron_set!r}")
        if (self.neuron_set in ("gap", "cohens_d")) != (self.neuron_k is not None):
            raise ValueError("neuron_k (a positive integer) goes with neuron_set 'gap' or 'cohens_d' only, "
                             f"got neuron_set={self.neuron_set!r}, neuron_k={self.neuron_k!r}")
        if self.neuron_k is not None and not (isinstance(self.neuron_k, int) and self.neuron_k >= 1):
            raise ValueError(f"neuron_k must be an integer >= 1, got {self.neuron_k!r}")
        if self.neuron_set == "gap" and self.stats_pass != "fused":
            raise ValueError("neuron_set='gap' reads X_en^T X_en of the fused statistics pass: set stats_pass='fused'")
        if not self.decision_weight >= 1.0:
            raise ValueError(f"decision_weight must be >= 1 (1: every preserved token alike), got {self.decision_weight!r}")
        if self.decision_weight != 1.0 and self.stats_pass != "fused":
            raise ValueError("decision_weight != 1 reads the decision rows' Gram of the fused statistics pass: "
                             "set stats_pass='fused'")
        if self.layer == "auto" and self.val_fraction == 0.0:
            raise ValueError("layer='auto' chooses the layer on validation anchors: set val_fraction > 0 "
                             "or give an explicit layer")


@dataclass
class Anchors:
    """Anchor prompts split by parallel_id into fit and validation parts."""

    fit_harmful: list[Prompt]
    fit_harmless: list[Prompt]
    val_harmful: list[Prompt]
    val_harmless: list[Prompt]


@dataclass
class FitReport:
    layer: int
    n_neurons: int
    candidates: list[dict] = field(default_factory=list)
    neuron_sets: dict[int, neurons.NeuronSets] = field(default_factory=dict)
    collect_seconds: float = 0.0
    solve_seconds: float = 0.0
    select_seconds: float = 0.0
    n_low: int = 0
    n_safe: int = 0
    stats: "_LayerStats | None" = None   # the chosen layer's statistics, to re-solve for other neuron sets
    # seconds per stage: "statistics" (forward passes), "neurons", "solve" (all candidates),
    # "predict" (closed-form scores), "margins" (validation forward passes)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def split_anchors(harmful: Sequence[Prompt], harmless: Sequence[Prompt], val_fraction: float,
                  seed: int) -> Anchors:
    """Split both anchor lists by parallel_id (all translations of a request stay together)."""
    def split(items):
        ids = sorted({p.parallel_id for p in items})
        random.Random(seed).shuffle(ids)
        n_val = int(round(len(ids) * val_fraction))
        val = set(ids[:n_val])
        return [p for p in items if p.parallel_id not in val], [p for p in items if p.parallel_id in val]

    fit_h, val_h = split(harmful)
    fit_s, val_s = split(harmless)
    return Anchors(fit_h, fit_s, val_h, val_s)


def chat_texts(tokenizer, prompts: Sequence[Prompt], *, with_response: bool = False) -> list[str]:
    """Chat-formatted strings: the prompt with the generation prompt, or the whole conversation.

    :class:`mlsafe.chat.ChatText` (equal to ``apply_chat_template(..., tokenize=False)``) that
    remember where prompt and response sit, so :func:`mlsafe.probe.encode_batch` encodes them
    as plain text (special-token strings in the data cannot forge turns).
    """
    from mlsafe import chat

    out = []
    for p in prompts:
        if with_response:
            if p.response is None:
                raise ValueError(f"prompt {p.id} has no reference response; X_safe needs whole conversations")
            msgs = [{"role": "user", "content": p.text}, {"role": "assistant", "content": p.response}]
            out.append(chat.render(tokenizer, msgs))
        else:
            out.append(chat.render(tokenizer, [{"role": "user", "content": p.text}], add_generation_prompt=True))
    return out


def parallel_pairs(harmful: Sequence[Prompt], source: str, targets: Sequence[str]) -> tuple[list[Prompt], list[Prompt]]:
    """Target-language harmful prompts and their source-language originals, row by row."""
    by_id = {p.parallel_id: p for p in harmful if p.lang == source}
    low, src = [], []
    for p in harmful:
        if p.lang in targets and p.parallel_id in by_id:
            low.append(p)
            src.append(by_id[p.parallel_id])
    if not low:
        raise ValueError(f"no harmful anchors in {list(targets)} with a {source} original (same parallel_id)")
    return low, src


def default_candidates(model) -> list[int]:
    """All layers for models up to 8 layers; else the middle half (where safety features live)."""
    n = arch.n_layers(model)
    if n <= 8:
        return list(range(n))
    return list(range(n // 4, (3 * n) // 4))


class _LayerStats:
    """The streamed statistics of one candidate layer (``val``: validation-pair Gram with
    Y^T Y, only for ``layer_selection="predicted"``)."""

    def __init__(self, acts_harm, acts_safe, paired: probe.Gram, safe: probe.Gram, val: probe.Gram | None = None,
                 decision: probe.Gram | None = None):
        self.acts_harm, self.acts_safe, self.paired, self.safe = acts_harm, acts_safe, paired, safe
        self.val, self.decision = val, decision


def collect_stats(model, tokenizer, anchors: Anchors, cfg: EditConfig, layers: Sequence[int],
                  *, progress: bool = False, validation_pairs: bool = False) -> dict[int, _LayerStats]:
    """Statistics of every candidate layer, streamed in float64 (see the module docstring).

    cfg.stats_pass="separate": one collector per prompt group (English harmful prompts twice);
    "fused": one `probe.collect_fused` pass, every prompt read once (the fit pairs' Gram also keeps
    X_en^T X_en, for :func:`pair_gap_energy`). With `validation_pairs`
    the validation target-language harmful prompts and their English originals are streamed
    too (``_LayerStats.val``: X_low^T X_low, X_low^T X_en, X_en^T X_en).
    """
    kw = dict(batch_size=cfg.batch_size, progress=progress)
    src_harm = [p for p in anchors.fit_harmful if p.lang == cfg.source]
    src_safe = [p for p in anchors.fit_harmless if p.lang == cfg.source]
    low, src = parallel_pairs(anchors.fit_harmful, cfg.source, cfg.targets)
    conversations = anchors.fit_harmless + src_harm
    val_low, val_src = parallel_pairs(anchors.val_harmful, cfg.source, cfg.targets) if validation_pairs else ([], [])
    if cfg.stats_pass == "separate":
        acts_h = probe.collect(model, tokenizer, chat_texts(tokenizer, src_harm), layers,
                               position=cfg.position, what=("activations",), **kw)
        acts_s = probe.collect(model, tokenizer, chat_texts(tokenizer, src_safe), layers,
                               position=cfg.position, what=("activations",), **kw)
        safe = probe.collect(model, tokenizer, chat_texts(tokenizer, conversations, with_response=True), layers,
                             position="all", what=("mlp_inputs",), **kw)
        paired = probe.collect_paired(model, tokenizer, chat_texts(tokenizer, low), chat_texts(tokenizer, src),
                                      layers, position=cfg.position, **kw)
        val = {}
        if validation_pairs:
            texts = chat_texts(tokenizer, val_low + val_src)
            n = len(val_low)
            val = probe.collect_fused(model, tokenizer, texts, layers, position=cfg.position,
                                      pairs={"val": [(i, n + i) for i in range(n)]}, with_yty=["val"], **kw)
        return {layer: _LayerStats(acts_h[layer]["activations"], acts_s[layer]["activations"], paired[layer],
                                   safe[layer]["mlp_inputs"], val[layer]["val"] if val else None)
                for layer in layers}
    # fused: each prompt (by id; conversations are separate texts) read once
    index: dict[tuple[str, bool], int] = {}
    texts: list[str] = []

    def ids(prompts: Sequence[Prompt], with_response: bool = False) -> list[int]:
        new = [p for p in dict.fromkeys(prompts) if (p.id, with_response) not in index]
        for p, text in zip(new, chat_texts(tokenizer, new, with_response=with_response)):
            index[(p.id, with_response)] = len(texts)
            texts.append(text)
        return [index[(p.id, with_response)] for p in prompts]

    pairs = {"paired": list(zip(ids(low), ids(src)))}
    if validation_pairs:
        pairs["val"] = list(zip(ids(val_low), ids(val_src)))
    if cfg.decision_weight != 1.0:   # X_dec^T X_dec: the conversations' prompts at cfg.position (self-pairs)
        pairs["decision"] = [(i, i) for i in ids(conversations)]
    stats = probe.collect_fused(model, tokenizer, texts, layers, position=cfg.position,
                                moments={"harm": ids(src_harm), "harmless": ids(src_safe)},
                                grams={"safe": ids(conversations, with_response=True)}, pairs=pairs,
                                with_yty=["paired", "val"] if validation_pairs else ["paired"], **kw)
    return {layer: _LayerStats(st["harm"], st["harmless"], st["paired"], st["safe"], st.get("val"), st.get("decision"))
            for layer, st in stats.items()}


def predicted_gap_closed(model, edit: SparseEdit, st: _LayerStats) -> float:
    """Closed-form fraction of the validation pairs' safety gap the edit closes at its layer:
    :func:`gap_closed` on ``st.val`` (the MLP inputs at the edited layer do not depend on the
    edit, so this equals what the edited model shows on those pairs' pre-activations). Needs
    ``st.val`` (collect_stats(..., validation_pairs=True))."""
    if st.val is None:
        raise ValueError("no validation-pair statistics: collect_stats(..., validation_pairs=True)")
    return gap_closed(model, edit, st.val)


def gap_closed(model, edit: SparseEdit, pairs: probe.Gram) -> float:
    """1 - sum_modules ||X_low dW - D_S||^2 / sum_modules ||D_S||^2 over the pairs of `pairs`
    (a Gram of target rows X_low against English rows X_en with Y^T Y), D_S = (X_en - X_low) W_S:
    eq. 4's first term relative to the target's energy, i.e. the fit's (uncentred) R^2 on those
    pairs' pre-activations; on the fit pairs (``st.paired``) it is the in-sample R^2, on
    validation pairs the held-out one."""
    if pairs.yty is None:
        raise ValueError("the pair Gram holds no X_en^T X_en: collect it with with_yty (stats_pass='fused')")
    xtx, xty, yty = (t.cpu() for t in (pairs.xtx, pairs.xty, pairs.yty))
    xte = xty - xtx                                          # X_low^T (X_en - X_low)
    ete = yty - xty - xty.T + xtx                            # (X_en - X_low)^T (X_en - X_low)
    resid = gap = 0.0
    for module in edit.modules:
        w = arch.neuron_weight(model, edit.layer, module).detach()
        w_s = w[edit.neurons.to(w.device)].T.to(torch.float64).cpu()      # W_S, d_in x m
        dw = edit.delta(module).cpu()
        d2 = float((w_s * (ete @ w_s)).sum())                            # ||D_S||^2
        resid += float((dw * (xtx @ dw)).sum()) - 2.0 * float((dw * (xte @ w_s)).sum()) + d2
        gap += d2
    return 1.0 - resid / gap if gap > 0 else 0.0


def pair_gap_energy(model, layer: int, st: _LayerStats, module: str = "gate") -> torch.Tensor:
    """Per-neuron energy of the fit pairs' pre-activation gap, ||(X_en - X_low) w_j||^2 / N, [d_ff]
    float64: how far each neuron's input sits from English on the target-language harmful
    prompts (the rows of D over all neurons). Needs the fused statistics (X_en^T X_en kept)."""
    g = st.paired
    if g.yty is None:
        raise ValueError("the pair statistics hold no X_en^T X_en: collect them with stats_pass='fused'")
    xtx, xty, yty = (t.cpu() for t in (g.xtx, g.xty, g.yty))
    ete = yty - xty - xty.T + xtx
    w = arch.neuron_weight(model, layer, module).detach().to(torch.float64).cpu()    # [d_ff, d_in]
    return ((w @ ete) * w).sum(-1) / g.n


def select_neurons(model, layer: int, sets: neurons.NeuronSets, st: _LayerStats, cfg: EditConfig) -> torch.Tensor:
    """The sorted neuron indices cfg.neuron_set picks at `layer` (see NEURON_SETS)."""
    n = sets.cohens_d.numel()
    if cfg.neuron_set == "safety":
        return sets.s_safety
    if cfg.neuron_set == "all":
        return torch.arange(n)
    k = min(cfg.neuron_k, n)
    score = pair_gap_energy(model, layer, st) if cfg.neuron_set == "gap" else sets.cohens_d.clamp(max=1e12)
    return score.topk(k).indices.sort().values


def edit_gram(model, layer: int, module: str, idx: torch.Tensor, st: _LayerStats, *,
              pair_offset: torch.Tensor | None = None, decision_weight: float = 1.0) -> solver.EditGram:
    """Per-row normalised EditGram of one module (see the module docstring).

    `pair_offset` (default None: the paper's target): X_low^T O [d_in, d_in], in the units of
    st.paired (sums over the fit pairs), for input-space shifts O (row i: a vector to take out of
    pair i's gap x_en,i - x_low,i); the target becomes D_S' = (X_en - X_low - O) W_S, so
    X_low^T D_S' = (X_low^T X_en - X_low^T X_low - X_low^T O) W_S (see :func:`pair_offset`)."""
    w = arch.neuron_weight(model, layer, module).detach()
    w_s = w[idx.to(w.device)].T.to(torch.float64).cpu()                     # W_S, d_in x m
    xtx = st.paired.xtx.cpu()
    gap = st.paired.xty.cpu() - xtx                                          # X_low^T (X_en - X_low)
    if pair_offset is not None:
        gap = gap - pair_offset.to(gap)
    xtd = gap @ w_s                                                          # X_low^T D_S
    n_low, n_safe, safe = st.paired.n, st.safe.n, st.safe.xtx.cpu()
    if decision_weight != 1.0:   # the decision rows counted decision_weight times (EditConfig.decision_weight)
        dec = getattr(st, "decision", None)
        if dec is None:
            raise ValueError("decision_weight != 1 needs the decision rows' Gram: collect_stats with that config")
        safe = safe + (decision_weight - 1.0) * dec.xtx.cpu()
        n_safe = n_safe + (decision_weight - 1.0) * dec.n
    return solver.EditGram(xtx / n_low, xtd / n_low, safe / n_safe, n_low=n_low, n_safe=n_safe)


def solve_factors(g: solver.EditGram, cfg: EditConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with dW = A @ B by the configured solver (Theorem 4.1 by default)."""
    rank = min(cfg.rank, g.d_in, g.m)
    if cfg.solver == "whitened":
        return solver.low_rank_factors(g, rank=rank, gamma=cfg.gamma, lam=cfg.lam)
    if cfg.solver == "ridge":  # the unconstrained solution, stored exactly (full rank)
        m = solver.ridge(g, gamma=cfg.gamma, lam=cfg.lam)
        return m, torch.eye(g.m, dtype=m.dtype)
    if cfg.solver == "naive":
        dw = solver.naive_truncation(g, rank=rank, gamma=cfg.gamma, lam=cfg.lam)
    else:
        dw = solver.solve_nullspace(g, rank=rank, lam=cfg.lam, threshold=cfg.nullspace_threshold)
    u, s, vh = torch.linalg.svd(dw, full_matrices=False)
    return u[:, :rank] * s[:rank], vh[:rank]


def build_edit(model, layer: int, idx: torch.Tensor, st: _LayerStats, cfg: EditConfig, *,
               base_fingerprint: str | None = None, pair_offset: torch.Tensor | None = None,
               up_given_gate: tuple[torch.Tensor, torch.Tensor] | None = None) -> SparseEdit:
    """The SparseEdit of neurons `idx` at `layer` solved from `st`. `base_fingerprint`: the
    unedited model's fingerprint(model, layer) when the caller already holds it (it hashes
    every weight: seconds on a 0.5B model), else computed here.

    Options (both default off, issue 13's leads 4 and 5): `pair_offset` changes every module's
    target (:func:`edit_gram`); `up_given_gate` = (X_low, X_en), the fit pairs' MLP inputs at
    `layer` row by row (:func:`pair_inputs`), fits up's rows after gate's edit, against the
    English activations given the edited gate (:func:`up_factors_given_gate`; needs modules
    gate and up and the whitened solver; gate's rows are solved exactly as without it; not with
    `pair_offset`, whose shifts are linear in the inputs and the activations are not)."""
    if up_given_gate is not None and pair_offset is not None:
        raise ValueError("up_given_gate does not combine with pair_offset (the activation target is nonlinear)")
    if up_given_gate is not None and cfg.decision_weight != 1.0:
        raise ValueError("up_given_gate reads X_safe as it is: it does not combine with decision_weight != 1")
    if up_given_gate is not None and (set(cfg.modules) != {"gate", "up"} or cfg.solver != "whitened"):
        raise ValueError("up_given_gate fits up after gate: it needs modules ('gate', 'up') and solver 'whitened', "
                         f"got modules {cfg.modules} and solver {cfg.solver!r}")
    factors = {}
    for module in cfg.modules:
        if module == "up" and up_given_gate is not None:
            continue
        a, b = solve_factors(edit_gram(model, layer, module, idx, st, pair_offset=pair_offset,
                                       decision_weight=cfg.decision_weight), cfg)
        factors[module] = (a.float(), b.float())
    if up_given_gate is not None:
        a_g, b_g = factors["gate"]
        a, b = up_factors_given_gate(model, layer, idx, a_g.double() @ b_g.double(), *up_given_gate, st, cfg)
        factors["up"] = (a.float(), b.float())
    factors = {module: factors[module] for module in cfg.modules}
    ranks = {a.shape[1] for a, _ in factors.values()}  # solve_factors clamps to min(rank, d_in, m)
    hparams = {"rank": max(ranks), "requested_rank": cfg.rank, "gamma": cfg.gamma, "lam": cfg.lam,
               "position": cfg.position, "solver": cfg.solver, "targets": list(cfg.targets),
               "source": cfg.source, "tau_mag": cfg.tau_mag, "tau_stat": cfg.tau_stat, "seed": cfg.seed}
    if pair_offset is not None:
        hparams["target"] = "pair gap minus pair_offset"
    if cfg.decision_weight != 1.0:
        hparams["decision_weight"] = cfg.decision_weight
    if up_given_gate is not None:
        hparams["up_fit"] = "given the edited gate (up_factors_given_gate)"
    return SparseEdit(layer=layer, modules=cfg.modules, neurons=idx, factors=factors, hparams=hparams,
                      base_fingerprint=base_fingerprint or fingerprint(model, layer),
                      model_type=arch.get_arch(model).model_type)


def prompt_inputs(model, tokenizer, prompts: Sequence[Prompt], layer: int, cfg: EditConfig) -> torch.Tensor:
    """MLP inputs at `layer` of each prompt (with the generation prompt, at cfg.position "last"),
    float64 [N, d_in] in input order, from forward passes stopped after `layer` (batches of
    cfg.batch_size, left padding as in the statistics pass)."""
    from mlsafe import chat

    if cfg.position != "last":
        raise ValueError(f"prompt_inputs reads the last prompt token (position 'last'), got {cfg.position!r}")
    limit = chat.context_limit(model, tokenizer)
    device = next(model.parameters()).device
    texts, rows = chat_texts(tokenizer, prompts), []
    with torch.no_grad():
        for start in range(0, len(texts), cfg.batch_size):
            enc = probe.encode_batch(tokenizer, texts[start:start + cfg.batch_size], device, max_length=limit)
            with probe.capture(model, [layer], stop_after_last=True) as cap:
                cap.forward(**enc, use_cache=False)
            rows.append(probe.select_positions(cap.mlp_inputs[layer], enc["attention_mask"], "last")
                        .to(torch.float64).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, arch.d_model(model), dtype=torch.float64)


def pair_inputs(model, tokenizer, low: Sequence[Prompt], src: Sequence[Prompt], layer: int,
                cfg: EditConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prompt_inputs` of two parallel prompt lists (row i of each: pair i)."""
    if len(low) != len(src):
        raise ValueError(f"pair_inputs needs parallel lists, got {len(low)} and {len(src)} prompts")
    return prompt_inputs(model, tokenizer, low, layer, cfg), prompt_inputs(model, tokenizer, src, layer, cfg)


def mean_pair_shifts(x_low: torch.Tensor, x_src: torch.Tensor, langs: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per language, the mean over its pairs of x_src - x_low (rows of pair_inputs), float64 [d_in]."""
    if not (len(langs) == x_low.shape[0] == x_src.shape[0]):
        raise ValueError(f"{len(langs)} languages for {x_low.shape[0]} and {x_src.shape[0]} rows")
    return {lang: (x_src[rows] - x_low[rows]).mean(0)
            for lang in dict.fromkeys(langs) for rows in [[i for i, l in enumerate(langs) if l == lang]]}


def pair_offset(x_low: torch.Tensor, langs: Sequence[str], shifts: dict[str, torch.Tensor]) -> torch.Tensor:
    """X_low^T O for :func:`edit_gram`, with row i of O the shift of pair i's language
    (shifts[langs[i]], e.g. mean_pair_shifts of harmless parallel pairs): sum over languages l
    of (sum of l's rows of X_low) outer shifts[l], float64 [d_in, d_in] (a sum, as st.paired)."""
    if len(langs) != x_low.shape[0]:
        raise ValueError(f"{len(langs)} languages for {x_low.shape[0]} rows")
    missing = sorted(set(langs) - set(shifts))
    if missing:
        raise ValueError(f"no shift for language(s) {missing}")
    out = torch.zeros(x_low.shape[1], x_low.shape[1], dtype=torch.float64)
    for lang in dict.fromkeys(langs):
        rows = [i for i, l in enumerate(langs) if l == lang]
        out += torch.outer(x_low[rows].to(torch.float64).sum(0), shifts[lang].to(torch.float64))
    return out


def _gated_parts(model, layer: int, idx: torch.Tensor):
    """(W_gate,S, W_up,S) as float64 [d_in, m] and the MLP's activation function; a gated MLP
    without biases on gate/up is assumed (ValueError otherwise)."""
    spec = arch.get_arch(model)
    module = arch.mlp(model, layer)
    if spec.gate is None or spec.fused or any(getattr(getattr(module, n), "bias", None) is not None
                                              for n in (spec.gate, spec.up)):
        raise ValueError(f"{spec.model_type}: up_given_gate needs separate gate and up projections without bias")
    w = {m: arch.neuron_weight(model, layer, m).detach()[idx].T.to(torch.float64).cpu() for m in ("gate", "up")}
    return w["gate"], w["up"], getattr(module, spec.act)


def activation_residual(model, layer: int, idx: torch.Tensor, dw_gate: torch.Tensor, dw_up: torch.Tensor,
                        x_low: torch.Tensor, x_src: torch.Tensor) -> float:
    """||act(X_low (W_g + dW_g)) * (X_low (W_u + dW_u)) - act(X_en W_g) * (X_en W_u)||_F^2 / N on
    neurons `idx`: how far the edited neurons' activations on the target-language prompts sit
    from English's (the fit residual :func:`up_factors_given_gate` minimises, without its
    gamma and lambda terms)."""
    w_g, w_u, act = _gated_parts(model, layer, idx)
    x, y = x_low.to(torch.float64), x_src.to(torch.float64)
    a_en = act(y @ w_g) * (y @ w_u)
    a_low = act(x @ (w_g + dw_gate)) * (x @ (w_u + dw_up))
    return float(((a_low - a_en) ** 2).sum()) / x.shape[0]


def up_factors_given_gate(model, layer: int, idx: torch.Tensor, dw_gate: torch.Tensor, x_low: torch.Tensor,
                          x_src: torch.Tensor, st: _LayerStats, cfg: EditConfig, *,
                          chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Up's factors (A, B) fitted after gate's edit dW_g (issue 13's lead 5; not in the paper).

    A neuron's activation is a_j = (x W_u)_j act((x W_g)_j); the paper fits gate's and up's rows
    independently, each to its own pre-activation gap. Here, with phi = act(X_low (W_g + dW_g))
    (the edited gate on the fit pairs' target-language inputs X_low) and the English
    activations a_en = act(X_en W_g) * (X_en W_u), up's dW_u minimises per neuron j

        ||phi_j * (X_low (w_u,j + dw_j)) - a_en,j||^2 / N + gamma ||X_safe dw_j||^2 / N_safe + lam ||dw_j||^2,

    a weighted ridge with the per-neuron matrix H_j = X_low^T diag(phi_j^2) X_low / N +
    gamma X_safe^T X_safe / N_safe + lam I (solved in chunks of `chunk` neurons: m Cholesky
    solves of d_in x d_in). The rank-cfg.rank constraint has no closed form with a different
    H_j per neuron; the unconstrained minimiser M is truncated as Theorem 4.1 truncates
    (top-r SVD of R M with R^T R = Q), in the neuron-averaged metric Q = mean_j H_j. At full
    rank (r >= min(d_in, m)) this is the exact minimiser.
    """
    w_g, w_u, act = _gated_parts(model, layer, idx)
    x, y = x_low.to(torch.float64).cpu(), x_src.to(torch.float64).cpu()
    n, d = x.shape
    if y.shape != x.shape or n == 0:
        raise ValueError(f"X_low and X_en must be non-empty and of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    phi = act(x @ (w_g + dw_gate.to(torch.float64).cpu()))                   # [N, m]
    resid = act(y @ w_g) * (y @ w_u) - phi * (x @ w_u)                       # a_en - phi * u_low
    base = cfg.gamma * st.safe.xtx.cpu().to(torch.float64) / st.safe.n + cfg.lam * torch.eye(d, dtype=torch.float64)
    m = phi.shape[1]
    sol = torch.empty(d, m, dtype=torch.float64)
    for j0 in range(0, m, chunk):
        p = phi[:, j0:j0 + chunk]                                            # [N, c]
        h = (x.T.unsqueeze(0) * (p * p).T.unsqueeze(1)) @ x / n + base      # H_j, [c, d, d]
        rhs = (x.T @ (p * resid[:, j0:j0 + chunk]) / n).T.unsqueeze(-1)      # [c, d, 1]
        sol[:, j0:j0 + chunk] = torch.cholesky_solve(rhs, torch.linalg.cholesky(h)).squeeze(-1).T
    q = x.T @ (x * (phi * phi).mean(1, keepdim=True)) / n + base             # mean_j H_j
    chol = torch.linalg.cholesky(q)                                          # Q = L L^T, R = L^T
    u, s, vh = torch.linalg.svd(chol.T @ sol, full_matrices=False)
    r = min(cfg.rank, d, m)
    a = torch.linalg.solve_triangular(chol.T, u[:, :r] * s[:r], upper=True)
    return a, vh[:r]


def _has_pairs(harmful: Sequence[Prompt], cfg: EditConfig) -> bool:
    """Whether `harmful` holds a target-language prompt with a source original (a pair)."""
    src = {p.parallel_id for p in harmful if p.lang == cfg.source}
    return any(p.lang in cfg.targets and p.parallel_id in src for p in harmful)


def _validation_groups(anchors: Anchors, cfg: EditConfig) -> tuple[list[Prompt], list[Prompt], list[Prompt]]:
    """Target harmful, harmless and source harmful validation anchors."""
    return ([p for p in anchors.val_harmful if p.lang in cfg.targets], list(anchors.val_harmless),
            [p for p in anchors.val_harmful if p.lang == cfg.source])


def validation_margins(model, anchors: Anchors, cfg: EditConfig, margin: MarginFn) -> list[float]:
    """Mean margins on the validation anchors: target harmful, harmless, source harmful (one
    margin call over all three groups)."""
    groups = _validation_groups(anchors, cfg)
    values = margin(model, [p for g in groups for p in g])
    out, start = [], 0
    for g in groups:
        out.append(values[start:start + len(g)].mean().item())
        start += len(g)
    return out


def _score(model, edit: SparseEdit, anchors: Anchors, cfg: EditConfig, margin: MarginFn,
           before: list[float], fingerprints: Fingerprints, trunk: Trunk) -> dict:
    """Validation score: margin gain on target harmful minus margin gain on harmless prompts
    (and minus any margin lost on source harmful prompts); `before` = validation_margins unedited.
    `trunk`: recorded on that unedited pass at or below the edit's layer, replayed here."""
    with edit.applied(model, fingerprints=fingerprints), trunk.replay():
        after = validation_margins(model, anchors, cfg, margin)
    return score_gains(before, after)


def score_gains(before: Sequence[float], after: Sequence[float]) -> dict:
    """The validation score from validation_margins before and after an edit: the margin gain
    on target harmful prompts minus any gain on harmless ones and any loss on source harmful."""
    gain_h, gain_s, gain_src = (a - b for a, b in zip(after, before))
    return {"val_gain_harmful": gain_h, "val_gain_harmless": gain_s, "val_gain_source": gain_src,
            "score": gain_h - max(gain_s, 0.0) - max(-gain_src, 0.0)}


def fit(model, tokenizer, harmful: Sequence[Prompt], harmless: Sequence[Prompt] | None = None,
        cfg: EditConfig | None = None, *, margin: MarginFn | None = None, progress: bool = False,
        fingerprints: Fingerprints | None = None) -> tuple[SparseEdit, FitReport]:
    """Fit the paper's edit (Algorithm 1). See the module docstring for each step.

    `harmful` may be the (harmful, harmless) pair that mlsafe.data.anchors.load returns, with
    `harmless` left out; `cfg` defaults to EditConfig(targets=<every non-English language of
    the harmful anchors>); `margin` defaults to mlsafe.evaluate.margin.default_margin.
    `fingerprints`: the model's mlsafe.edit.Fingerprints when the caller holds them (the
    whole-model hash is taken once per fit either way, not once per candidate layer).
    """
    if harmless is None:
        harmful, harmless = harmful
    if cfg is None:
        cfg = EditConfig(targets=sorted({p.lang for p in harmful} - {SOURCE}))
    if margin is None:  # the default refusal/compliance start strings (English's for other languages)
        from mlsafe.evaluate.margin import default_margin

        margin = default_margin(tokenizer, {p.lang for p in [*harmful, *harmless]})
    anchors = split_anchors(harmful, harmless, cfg.val_fraction, cfg.seed)
    if cfg.layer == "auto":
        layers = list(cfg.candidate_layers or default_candidates(model))
    else:
        n = arch.n_layers(model)
        if not 0 <= int(cfg.layer) < n:
            raise ValueError(f"layer {cfg.layer} is out of range: this model has layers 0..{n - 1}")
        layers = [int(cfg.layer)]
    predicted = cfg.layer_selection == "predicted" and len(layers) > 1
    if predicted and not _has_pairs(anchors.val_harmful, cfg):
        raise ValueError(f"layer_selection='predicted' needs validation harmful anchors in {list(cfg.targets)} "
                         f"with a {cfg.source} original; raise val_fraction or use layer_selection='margins'")
    t0 = time.perf_counter()
    stats = collect_stats(model, tokenizer, anchors, cfg, layers, progress=progress, validation_pairs=predicted)
    report = FitReport(layer=-1, n_neurons=0, collect_seconds=time.perf_counter() - t0)
    fps = fingerprints or Fingerprints(model)
    clock = {k: 0.0 for k in ("neurons", "solve", "predict", "margins")}
    clock["statistics"] = report.collect_seconds
    built = []   # (row, edit, stats) of every candidate with neurons
    for layer in layers:
        st = stats[layer]
        t1 = time.perf_counter()
        sets = neurons.safety_neurons_from_moments(st.acts_harm, st.acts_safe,
                                                   tau_mag=cfg.tau_mag, tau_stat=cfg.tau_stat)
        clock["neurons"] += time.perf_counter() - t1
        report.neuron_sets[layer] = sets
        idx = select_neurons(model, layer, sets, st, cfg)
        row = {"layer": layer, "n_neurons": int(idx.numel()),
               "separability": float(sets.cohens_d[idx].clamp(max=1e6).mean()) if idx.numel() else 0.0}
        report.candidates.append(row)
        if idx.numel() == 0:
            row["score"] = float("-inf")
            continue
        t1 = time.perf_counter()
        edit = build_edit(model, layer, idx, st, cfg, base_fingerprint=fps(layer))
        row["solve_seconds"] = time.perf_counter() - t1
        clock["solve"] += row["solve_seconds"]
        if predicted:
            t1 = time.perf_counter()
            row["predicted_gap_closed"] = predicted_gap_closed(model, edit, st)
            clock["predict"] += time.perf_counter() - t1
        built.append((row, edit, st))
    if len(layers) == 1:
        for row, _, _ in built:
            row["score"] = 0.0
    elif built:
        confirm = built
        if predicted:
            confirm = sorted(built, key=lambda b: -b[0]["predicted_gap_closed"])[:cfg.confirm_top]
            for row, _, _ in built:
                row["confirmed"] = any(row is c[0] for c in confirm)
                if not row["confirmed"]:
                    row["score"] = float("-inf")   # not scored by margins
        t2 = time.perf_counter()
        # the layers below the lowest scored candidate are run once (mlsafe.trunk)
        trunk = Trunk(model, min(row["layer"] for row, _, _ in confirm))
        with trunk.record():
            before = validation_margins(model, anchors, cfg, margin)
        for row, edit, _ in confirm:
            row.update(_score(model, edit, anchors, cfg, margin, before, fps, trunk))
        del trunk
        clock["margins"] = time.perf_counter() - t2
    for row, _, _ in built:   # the key order of the margins-only rows before stage_seconds existed
        row["solve_seconds"] = row.pop("solve_seconds")
    report.select_seconds = clock["predict"] + clock["margins"]
    report.stage_seconds = clock
    best = None
    for cand in built:
        if best is None or cand[0]["score"] > best[0]["score"]:
            best = cand
    if best is None:
        raise ValueError(f"no candidate layer in {layers} has any safety neuron at tau_mag={cfg.tau_mag}, "
                         f"tau_stat={cfg.tau_stat}; lower the thresholds or give more anchors")
    row, edit, st = best
    report.layer, report.n_neurons = row["layer"], row["n_neurons"]
    report.solve_seconds, report.n_low, report.n_safe = row["solve_seconds"], st.paired.n, st.safe.n
    report.stats = st
    return edit, report

