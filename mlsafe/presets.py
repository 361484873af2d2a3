"""Named edit recipes (issue 13): EditConfig settings chosen by name, resolved per model.

``paper``: the paper's recipe as written (English safety neurons S = S_mag | S_stat with
tau_mag 2.0 and tau_stat 1.0, gate and up rows, rank 8, one layer) with this project's
defaults where the paper is silent (gamma, lambda, position, the layer chosen on validation
anchors; on real models the suite's cost-saving choices, see mlsafe.data.real.real_edit_defaults).

``best``: the recipe the validation search (scripts/edit_search.py, results/<model>/search/)
found on qwen2.5-coder-0.5b's anchors and validation anchors; ``best-kl``: the same with the
preservation weight raised until the harmless validation KL meets the 0.05-nat goal. Each
docstring entry says what was chosen and why. Nothing in them was chosen on evaluation prompts.

A preset is a function of the model (layer choices depend on its depth) returning
EditConfig keyword arguments; the run's own overrides (--layer, --rank) win over it.
"""

from __future__ import annotations

from collections.abc import Callable

from mlsafe.registry import registrar

PRESETS: dict[str, Callable[[object], dict]] = {}


#: Decorator: register `fn(model) -> dict` as the preset `name` (once).
register_preset = registrar(PRESETS, "preset")


@register_preset("paper")
def paper(model) -> dict:
    return {}


@register_preset("best")
def best(model) -> dict:
    """The `neuron_k` = min(1024, d_ff / 2) neurons whose inputs sit farthest from English on the
    fit pairs (pair-gap energy) at one layer of the last third, the layer chosen among those
    candidates by validation margins. Why, on qwen2.5-coder-0.5b's validation anchors
    (results/qwen2.5-coder-0.5b/search/search.json, ceiling/ceiling.json): the paper's S at any
    of layers 13-21 gains at most +0.18 nats of the 2.37-nat gap (patching S's activations with
    English's closes at most 18 % at any layer); the whole MLP output carries up to 78 % at
    layer 17; every neuron of layer 17 gains +1.01 nats but also +0.14 on harmless prompts;
    its 1,024 top pair-gap neurons gain +0.83 with -0.03 on harmless (score 0.572, 0.29 % of
    the parameters). Every neuron with gamma 10 scores higher (0.64: +0.91, harmless +0.02) but
    ran after this preset was fixed, and an edit of every neuron has no disjoint random control;
    capping k at half the layer leaves room for one.
    The closed-form predicted ranking is not used: it ranks the earliest layers first."""
    from mlsafe import arch   # here, so that `mlsafe --help` reads the registry without torch

    n = arch.n_layers(model)
    late = list(range((2 * n) // 3, n - 1)) if n > 3 else list(range(n))
    return {"neuron_set": "gap", "neuron_k": max(1, min(1024, arch.d_ff(model) // 2)), "candidate_layers": late,
            "layer_selection": "margins", "stats_pass": "fused"}


@register_preset("best-kl")
def best_kl(model) -> dict:
    """`best` with the preservation weight gamma 50 (Theorem 4.1, eq. 4-8) instead of 1: the
    highest validation closure within the KL goal (first-token KL <= 0.05 nats on the harmless
    validation anchors) of the trials that leave room for a disjoint random control. Why, on
    qwen2.5-coder-0.5b's validation anchors at layer 17 (results/qwen2.5-coder-0.5b/search/
    kl_sweep.json, leads.json): `best` (gamma 1) closes 35 % of the 2.37-nat gap at KL 0.30;
    gamma 10, 30, 100 trade it down to 31.8 % (KL 0.15), 25.8 % (0.068), 11.1 % (0.016); gamma 50
    closes 20.6 % at KL 0.040.
    Every neuron at gamma 50 closes more (27.4 %, KL 0.040) but leaves no neuron for a control."""
    return {**best(model), "gamma": 50.0}


def resolve(name: str, model) -> dict:
    """The EditConfig keyword arguments of preset `name` for `model`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name](model))
