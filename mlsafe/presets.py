"""Named edit recipes (issue 13): EditConfig settings chosen by name, resolved per model.

``paper``: the paper's recipe as written (English safety neurons S = S_mag | S_stat with
tau_mag 2.0 and tau_stat 1.0, gate and up rows, rank 8, one layer) with this project's
defaults where the paper is silent (gamma, lambda, position, the layer chosen on validation
anchors; on real models the suite's cost-saving choices, see mlsafe.data.real.real_edit_defaults).

``best``: the recipe the validation search (scripts/edit_search.py, results/<model>/search/)
found on qwen2.5-coder-0.5b's anchors and validation anchors; its docstring entry says what
was chosen and why. Nothing in it was chosen on evaluation prompts.

A preset is a function of the model (layer choices depend on its depth) returning
EditConfig keyword arguments; the run's own overrides (--layer, --rank) win over it.
"""

from __future__ import annotations

from collections.abc import Callable

PRESETS: dict[str, Callable[[object], dict]] = {}


def register_preset(name: str):
    def deco(fn):
        PRESETS[name] = fn
        return fn
    return deco


@register_preset("paper")
def paper(model) -> dict:
    return {}


@register_preset("best")
def best(model) -> dict:
    """Every neuron of one layer in the last third (the MLP-output ceiling lies there), the layer
    chosen among those candidates by validation margins (the closed-form predicted ranking picks
    the earliest layers, which carry nothing: results/qwen2.5-coder-0.5b/ceiling)."""
    from mlsafe import arch   # here, so that `mlsafe --help` reads the registry without torch

    n = arch.n_layers(model)
    late = list(range((2 * n) // 3, n - 1)) if n > 3 else list(range(n))
    return {"neuron_set": "all", "candidate_layers": late, "layer_selection": "margins", "stats_pass": "fused"}


def resolve(name: str, model) -> dict:
    """The EditConfig keyword arguments of preset `name` for `model`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name](model))
