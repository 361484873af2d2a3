"""The random-neuron control of the edit, drawn in one place.

A control set has the edit's size |S| and sits at the edit's layer; it is solved with the
same statistics and hyper-parameters as the edit (mlsafe.transfer.build_edit), so any
difference from the edit is the choice of neurons. Draw k of a run with seed `seed` uses
the generator seed 10_000 * seed + k, so the draws of different seeds never share a stream.
The pipeline's control (summary.json, edit.random_control) draws disjoint from S; the
`random_neurons` baseline (baselines.csv) draws from all d_ff neurons.
"""

from __future__ import annotations

import torch

from mlsafe import neurons


def control_seed(seed: int, k: int) -> int:
    """The generator seed of draw k of a run with seed `seed`."""
    return 10_000 * seed + k


def random_control_sets(edit_neurons: torch.Tensor, d_ff: int, seed: int, n: int, *,
                        disjoint: bool) -> list[torch.Tensor]:
    """`n` random sorted neuron sets of len(edit_neurons) in [0, d_ff) (neurons.random_like),
    draw k seeded with control_seed(seed, k); disjoint from edit_neurons when `disjoint`."""
    return [neurons.random_like(edit_neurons, d_ff, torch.Generator().manual_seed(control_seed(seed, k)),
                                disjoint=disjoint) for k in range(n)]
