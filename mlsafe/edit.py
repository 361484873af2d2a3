"""The sparse weight edit (paper Sec. 4.3-4.4, Theorem 4.1, Algorithm 1) as a reversible patch.

A :class:`SparseEdit` holds the low-rank update dW* = A @ B (d_in x m, eq. 4-8) of the
input-projection columns W_S of the safety neurons S at one layer, in the paper's
row-vector convention (W_S <- W_S + dW). Applying it writes rows S of
``arch.neuron_weight(model, layer, module)`` (+= dW^T) and keeps a copy of the original
rows; reverting copies them back (never subtracts), so every parameter is bit-identical
afterwards. Edits are small safetensors files tied to their base model by a
:func:`fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

import mlsafe
from mlsafe import arch
from mlsafe.results import write_atomic

FORMAT = "mlsafe.SparseEdit"
_SAMPLES_PER_TENSOR = 1024


def _hash_tensor(h, t: torch.Tensor) -> None:
    h.update(t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())


def sample_indices(n: int, k: int = _SAMPLES_PER_TENSOR) -> torch.Tensor:
    """min(k, n) evenly spaced indices of [0, n), in exact integer arithmetic (a float
    linspace rounds past the end for tensors above 2^24 entries, e.g. a 262k-token embedding)."""
    k = min(k, n)
    return torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)


def fingerprint(model: nn.Module, layer: int | None = None) -> str:
    """sha256 of a model's identity, cheap even for a 7B model.

    Hashes the model_type, the name/shape/dtype of every parameter and 1024 evenly
    spaced entries of each (so a differently initialised or trained model differs),
    plus, when `layer` is given, every byte of that layer's MLP parameters (so a model
    whose layer is already edited, or whose neurons are scaled, differs too).
    """
    spec = arch.get_arch(model)
    h = hashlib.sha256(f"{spec.model_type}|layers={arch.n_layers(model)}".encode())
    for name, p in model.named_parameters():
        h.update(f"|{name}|{tuple(p.shape)}|{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        _hash_tensor(h, flat[sample_indices(flat.numel()).to(flat.device)])
    if layer is not None:
        h.update(f"|layer={layer}".encode())
        for p in arch.mlp(model, layer).parameters():
            _hash_tensor(h, p)
    return h.hexdigest()


class RowPatch:
    """Overwritten rows of neuron_weight views, with their saved originals.

    Returned by :meth:`SparseEdit.apply`; ``revert()`` copies the originals back exactly.
    """

    def __init__(self, model: nn.Module, layer: int):
        self.model, self.layer = model, layer
        self._saved: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def write(self, which: str, idx: torch.Tensor, new_rows) -> None:
        """Set rows idx of neuron_weight(which) to new_rows(original float64 rows)."""
        w = arch.neuron_weight(self.model, self.layer, which)
        idx = idx.to(w.device)
        with torch.no_grad():
            original = w[idx].clone()
            self._saved.append((which, idx, original))
            w[idx] = new_rows(original.to(torch.float64)).to(w.dtype)

    def revert(self) -> None:
        """Copy the original rows back (last written first); a second call does nothing."""
        with torch.no_grad():
            while self._saved:
                which, idx, original = self._saved.pop()
                arch.neuron_weight(self.model, self.layer, which)[idx] = original


def _neuron_index(neurons, n_max: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(neurons).detach().cpu()
    if idx.dim() != 1 or idx.numel() == 0 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"{what} must be a non-empty 1-D integer tensor of neuron indices")
    idx = idx.long()
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"{what} contains duplicate neuron indices")
    if n_max and (int(idx.min()) < 0 or int(idx.max()) >= n_max):
        raise ValueError(f"{what} must lie in [0, {n_max}) (d_ff of this model)")
    return idx


@dataclass
class SparseEdit:
    """A low-rank edit of neurons S at one layer: W_S <- W_S + A @ B per module (Theorem 4.1).

    layer:   the edited decoder layer.
    modules: which input projections are edited, a subset of ("gate", "up").
    neurons: LongTensor [m], the neuron set S.
    factors: module -> (A [d_in, r], B [r, m]); dW = A @ B is d_in x m (paper convention).
    hparams: the solver's settings (rank, gamma, lambda, ...), JSON-serialisable.
    base_fingerprint: fingerprint(base_model, layer) of the model the edit was solved for.
    model_type: config.model_type of that model.
    """

    layer: int
    modules: tuple[str, ...]
    neurons: torch.Tensor
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    hparams: dict
    base_fingerprint: str
    model_type: str

    def __post_init__(self):
        self.modules = tuple(self.modules)
        if not self.modules or len(set(self.modules)) != len(self.modules) \
                or not set(self.modules) <= {"gate", "up"}:
            raise ValueError(f"modules must be distinct entries of ('gate', 'up'), got {self.modules!r}")
        self.neurons = _neuron_index(self.neurons, 0, "neurons")
        if set(self.factors) != set(self.modules):
            raise ValueError(f"factors must have exactly the keys {self.modules}, got {sorted(self.factors)}")
        m = self.neurons.numel()
        for module, (a, b) in self.factors.items():
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0] or b.shape[1] != m:
                raise ValueError(
                    f"factors[{module!r}] must be (A [d_in, r], B [r, {m}]), got "
                    f"{tuple(a.shape)} and {tuple(b.shape)}")
        try:  # normalised through JSON, so a loaded edit compares equal to the saved one
            self.hparams = json.loads(json.dumps(self.hparams))
        except TypeError as err:
            raise ValueError(f"hparams must be JSON-serialisable (numbers, strings, lists): {err}") from None

    @property
    def d_in(self) -> int:
        return self.factors[self.modules[0]][0].shape[0]

    def delta(self, module: str) -> torch.Tensor:
        """dW = A @ B for `module`, float64 [d_in, m]."""
        a, b = self.factors[module]
        return a.to(torch.float64) @ b.to(torch.float64)

    def _check(self, model: nn.Module) -> None:
        spec = arch.get_arch(model)
        if spec.model_type != self.model_type:
            raise ValueError(f"this edit is for model_type {self.model_type!r}, the model is "
                             f"{spec.model_type!r}; load the base model the edit was solved for")
        arch.mlp(model, self.layer)  # validates the layer index
        bad = [m for m in self.modules if m not in spec.editable]
        if bad:
            raise ValueError(f"{spec.model_type} has no {bad} projection to edit; editable: {spec.editable}")
        _neuron_index(self.neurons, arch.d_ff(model), "neurons")
        if self.d_in != arch.d_model(model):
            raise ValueError(f"edit has d_in={self.d_in} but the model has d_model={arch.d_model(model)}")
        actual = fingerprint(model, self.layer)
        if actual != self.base_fingerprint:
            raise ValueError(
                "refusing to apply: the model's fingerprint differs from the edit's base model "
                f"({actual[:12]} != {self.base_fingerprint[:12]}). It is a different checkpoint or "
                "dtype, or this layer is already edited/scaled; apply the edit to the unmodified "
                "base model it was solved for (revert other edits first)")

    def apply(self, model: nn.Module) -> RowPatch:
        """Write W_S + dW into the model; returns a handle whose .revert() restores it exactly."""
        self._check(model)
        patch = RowPatch(model, self.layer)
        try:
            for module in self.modules:
                delta_t = self.delta(module).T
                patch.write(module, self.neurons, lambda rows, d=delta_t: rows + d.to(rows.device))
        except BaseException:
            patch.revert()
            raise
        return patch

    @contextmanager
    def applied(self, model: nn.Module):
        """Context manager: the edit is applied inside and reverted bit-exactly on exit."""
        patch = self.apply(model)
        try:
            yield patch
        finally:
            patch.revert()

    def fraction_of_parameters(self, model: nn.Module) -> float:
        """Changed entries (m * d_in per module) over all unique parameters of `model`."""
        total = sum(p.numel() for p in model.parameters())
        return self.neurons.numel() * self.d_in * len(self.modules) / total

    def save(self, path: str | Path) -> None:
        """Write the edit as safetensors (atomically), with its metadata; no pickle."""
        tensors = {"neurons": self.neurons.contiguous()}
        for module, (a, b) in self.factors.items():
            tensors[f"{module}.A"] = a.detach().cpu().clone(memory_format=torch.contiguous_format)
            tensors[f"{module}.B"] = b.detach().cpu().clone(memory_format=torch.contiguous_format)
        metadata = {
            "format": FORMAT, "mlsafe_version": mlsafe.__version__,
            "base_fingerprint": self.base_fingerprint, "model_type": self.model_type,
            "layer": str(self.layer), "modules": json.dumps(list(self.modules)),
            "hparams": json.dumps(self.hparams, sort_keys=True),
        }
        write_atomic(Path(path), st_save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> "SparseEdit":
        """Read an edit written by :meth:`save`; ValueError for a file that is not one."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as err:
            raise ValueError(f"{path} is not a safetensors file ({err}); expected an edit "
                             "written by SparseEdit.save") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is a safetensors file but not an mlsafe edit "
                             f"(metadata format={meta.get('format')!r}); write it with SparseEdit.save")
        try:
            modules = tuple(json.loads(meta["modules"]))
            return cls(layer=int(meta["layer"]), modules=modules, neurons=tensors["neurons"],
                       factors={m: (tensors[f"{m}.A"], tensors[f"{m}.B"]) for m in modules},
                       hparams=json.loads(meta["hparams"]),
                       base_fingerprint=meta["base_fingerprint"], model_type=meta["model_type"])
        except (KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is a damaged mlsafe edit (missing or bad {err}); re-save it") from None


@contextmanager
def scaled_neurons(model: nn.Module, neurons_by_layer: dict[int, torch.Tensor], alpha: float):
    """Multiply neuron outputs a_j by alpha for the given neurons (the paper's eq. 1 diagnostic).

    Scales rows j of neuron_weight(model, layer, "down") (what neuron j writes), which is
    exactly a_j -> alpha * a_j downstream; the original rows are restored bit-exactly on exit.
    """
    patches = []
    try:
        for layer, neurons in neurons_by_layer.items():
            idx = _neuron_index(neurons, arch.d_ff(model), f"neurons_by_layer[{layer}]")
            patch = RowPatch(model, layer)
            patches.append(patch)
            patch.write("down", idx, lambda rows: rows * float(alpha))
        yield model
    finally:
        for patch in reversed(patches):
            patch.revert()
