"""The sparse weight edit (paper Sec. 4.3-4.4, Theorem 4.1, Algorithm 1) as a reversible patch.

A :class:`SparseEdit` holds the low-rank update dW* = A @ B (d_in x m, eq. 4-8) of the
input-projection columns W_S of the safety neurons S at one layer, in the paper's
row-vector convention (W_S <- W_S + dW). Applying it writes rows S of
``arch.neuron_weight(model, layer, module)`` (+= dW^T) and keeps a copy of the original
rows; reverting copies them back (never subtracts), so every parameter is bit-identical
afterwards. Edits are small safetensors files tied to their base model by a dtype- and
device-independent :func:`fingerprint` and protected by a sha256 of their own content
(:func:`content_sha256`, checked on load), written byte-identically for identical edits.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

import mlsafe
from mlsafe import arch
from mlsafe.errors import UserError
from mlsafe.results import write_atomic

FORMAT = "mlsafe.SparseEdit"
#: version of the :func:`fingerprint` scheme, stored in every edit file.
FINGERPRINT_SCHEME = "bf16-full-v2"
#: models with at most this many parameters are hashed in full (measured cost in :func:`fingerprint`).
FULL_HASH_MAX_PARAMS = 2_000_000_000
_SAMPLES_PER_TENSOR = 65_536
_CHUNK = 1 << 24  # entries cast and hashed at a time (bounded extra memory)


class EditFileError(UserError, ValueError):
    """An edit file that is missing, not an edit, damaged or inconsistent (one line, exit 2 in the CLI)."""


def _hash_tensor(h, t: torch.Tensor) -> None:
    """Hash the values of `t` in a dtype- and device-independent form: each entry rounded to
    bfloat16 (round-to-nearest-even, the same on CPU and CUDA), as raw little-endian bytes.
    A float32 model and its ``.to(torch.bfloat16)`` copy hash identically; integer and bool
    tensors are hashed as int64."""
    flat = t.detach().reshape(-1)
    cast = torch.bfloat16 if flat.dtype.is_floating_point else torch.int64
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start:start + _CHUNK].to(cast).contiguous().cpu()
        h.update(part.view(torch.uint8).numpy())


def sample_indices(n: int, k: int = _SAMPLES_PER_TENSOR) -> torch.Tensor:
    """min(k, n) evenly spaced indices of [0, n), in exact integer arithmetic (a float
    linspace rounds past the end for tensors above 2^24 entries, e.g. a 262k-token embedding)."""
    k = min(k, n)
    return torch.arange(k, dtype=torch.long) * (n - 1) // max(k - 1, 1)


def _mlp_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for layer in range(arch.n_layers(model)) for p in arch.mlp(model, layer).parameters()}


def fingerprint(model: nn.Module, layer: int | None = None) -> str:
    """sha256 of a model's identity, independent of its dtype (float32/bfloat16) and device.

    Hashes the model_type, the layer count, the name and shape of every parameter and
    their values rounded to bfloat16 (:func:`_hash_tensor`), then, when `layer` is given,
    every value of that layer's MLP again (so an edit is tied to its layer).

    What it guarantees: for models with at most FULL_HASH_MAX_PARAMS (2e9) parameters every
    parameter entry is hashed, so changing any entry anywhere in the model by more than one
    bfloat16 ulp (2^-7 relative; smaller changes that alter its rounding too) changes it; for
    larger models every entry of every layer's MLP (gate/up/down, where edits and neuron
    scalings act) is hashed and the other tensors (attention, embeddings, norms) by 65,536
    evenly spaced entries each. Changes below bfloat16 resolution are not seen (that is what
    makes a bfloat16 copy of a float32 model the same model); a float16 copy may differ
    (double rounding). Cost, measured by tests/reliability/bench_fingerprint.py on a random
    Qwen2-0.5B-sized model (630M parameters as built, CPU, one thread): 5.1 s in float32,
    3.0 s in bfloat16 (about 8 and 5 ns per parameter; the float32 -> bfloat16 cast
    dominates, sha256 runs at about 0.9 GB/s). Code that needs it for several layers of
    one unchanged model hashes the model once with :class:`Fingerprints`.
    """
    return Fingerprints(model)(layer)


class Fingerprints:
    """:func:`fingerprint` of one model state at any layer, the whole-model hash computed once.

    Each call adds only that layer's MLP (about 2 % of a 0.5B model's weights) to a copy of
    the kept hash. The caller promises the weights do not change while it uses the object,
    except by edits applied and reverted through this module: a call while the applied
    patches differ from those at construction (:func:`patch_state`) refuses, since the
    kept hash would describe another state."""

    def __init__(self, model: nn.Module):
        self.state = patch_state(model)
        spec = arch.get_arch(model)
        params = list(model.named_parameters())
        full = sum(p.numel() for _, p in params) <= FULL_HASH_MAX_PARAMS
        mlp_ids = set() if full else _mlp_param_ids(model)
        h = hashlib.sha256(f"{FINGERPRINT_SCHEME}|{spec.model_type}|layers={arch.n_layers(model)}".encode())
        for name, p in params:
            h.update(f"|{name}|{tuple(p.shape)}".encode())
            if full or id(p) in mlp_ids:
                _hash_tensor(h, p)
            else:
                flat = p.detach().reshape(-1)
                _hash_tensor(h, flat[sample_indices(flat.numel()).to(flat.device)])
        self.model, self._hash = model, h

    def __call__(self, layer: int | None = None) -> str:
        if patch_state(self.model) != self.state:
            raise ValueError("the model's applied edits changed since these fingerprints were taken; "
                             "take new ones (Fingerprints(model))")
        h = self._hash.copy()
        if layer is not None:
            h.update(f"|layer={layer}".encode())
            for p in arch.mlp(self.model, layer).parameters():
                _hash_tensor(h, p)
        return h.hexdigest()


#: model -> layers with a RowPatch that is not yet reverted (an applied edit or neuron scaling).
_ACTIVE: "weakref.WeakKeyDictionary[nn.Module, list[int]]" = weakref.WeakKeyDictionary()
#: model -> serial numbers of those RowPatches (patch_state: which applied patches, not only where).
_SERIALS: "weakref.WeakKeyDictionary[nn.Module, list[int]]" = weakref.WeakKeyDictionary()
_NEXT_SERIAL = itertools.count()


def patch_state(model: nn.Module) -> tuple[int, ...]:
    """The RowPatches applied to `model` and not reverted, by serial number: equal tuples at
    two moments mean the same patched rows (reverts are exact), so a hash taken at the first
    still holds at the second unless the weights were changed outside this module."""
    return tuple(_SERIALS.get(model, ()))


class RowPatch:
    """Overwritten rows of neuron_weight views, with their saved originals.

    Returned by :meth:`SparseEdit.apply`; ``revert()`` copies the originals back exactly.
    While it is not reverted, its layer counts as patched (SparseEdit.apply refuses to stack
    a second edit there even when the first one is below the fingerprint's resolution).
    """

    def __init__(self, model: nn.Module, layer: int):
        self.model, self.layer = model, layer
        self._saved: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.serial = next(_NEXT_SERIAL)
        _ACTIVE.setdefault(model, []).append(layer)
        _SERIALS.setdefault(model, []).append(self.serial)
        self._active = True

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
        if self._active:
            _ACTIVE[self.model].remove(self.layer)
            _SERIALS[self.model].remove(self.serial)
            self._active = False


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
        d_in = {a.shape[0] for a, _ in self.factors.values()}
        if len(d_in) != 1:
            raise ValueError(f"factors of all modules must share d_in, got {sorted(d_in)}")
        for module, (a, b) in self.factors.items():
            if not (a.dtype.is_floating_point and b.dtype.is_floating_point):
                raise ValueError(f"factors[{module!r}] must be floating point, got {a.dtype} and {b.dtype}")
            if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
                raise ValueError(f"factors[{module!r}] contain NaN or inf; re-fit the edit")
        try:  # normalised through JSON, so a loaded edit compares equal to the saved one
            self.hparams = json.loads(json.dumps(self.hparams))
        except TypeError as err:
            raise ValueError(f"hparams must be JSON-serialisable (numbers, strings, lists): {err}") from None
        if not isinstance(self.hparams, dict):
            raise ValueError(f"hparams must be a dict, got {type(self.hparams).__name__}")
        ranks = {module: a.shape[1] for module, (a, _) in self.factors.items()}
        if "rank" in self.hparams and any(r != self.hparams["rank"] for r in ranks.values()):
            raise ValueError(f"hparams rank={self.hparams['rank']!r} but the factors have rank {ranks}; "
                             "record the effective rank")

    @property
    def d_in(self) -> int:
        return self.factors[self.modules[0]][0].shape[0]

    def delta(self, module: str) -> torch.Tensor:
        """dW = A @ B for `module`, float64 [d_in, m]."""
        a, b = self.factors[module]
        return a.to(torch.float64) @ b.to(torch.float64)

    def _check(self, model: nn.Module, fingerprints: "Fingerprints | None" = None) -> None:
        spec = arch.get_arch(model)
        if spec.model_type != self.model_type:
            raise ValueError(f"this edit is for model_type {self.model_type!r}, the model is "
                             f"{spec.model_type!r}; load the base model the edit was solved for")
        arch.mlp(model, self.layer)  # validates the layer index
        bad = [m for m in self.modules if m not in spec.editable]
        if bad:
            raise ValueError(f"{spec.model_type} has no {bad} projection to edit; editable: {spec.editable}")
        _neuron_index(self.neurons, arch.d_ff(model), "neurons")
        for module, (a, b) in self.factors.items():
            if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
                raise ValueError(f"refusing to apply: factors[{module!r}] contain NaN or inf")
        if self.d_in != arch.d_model(model):
            raise ValueError(f"edit has d_in={self.d_in} but the model has d_model={arch.d_model(model)}")
        if fingerprints is not None and fingerprints.model is not model:
            raise ValueError("fingerprints were computed for another model object")
        actual = (fingerprints or Fingerprints(model))(self.layer)
        if actual != self.base_fingerprint:
            raise ValueError(
                "refusing to apply: the model's fingerprint differs from the edit's base model "
                f"({actual[:12]} != {self.base_fingerprint[:12]}). It is a different checkpoint "
                "(the fingerprint ignores dtype and device), or this layer is already edited/scaled; "
                "apply the edit to the unmodified base model it was solved for (revert other edits first)")
        if self.layer in _ACTIVE.get(model, []):
            raise ValueError(f"refusing to apply: layer {self.layer} of this model already has an applied "
                             "edit or neuron scaling; revert it first")

    def apply(self, model: nn.Module, *, fingerprints: "Fingerprints | None" = None) -> RowPatch:
        """Write W_S + dW into the model; returns a handle whose .revert() restores it exactly.
        `fingerprints`: the unedited model's :class:`Fingerprints` when the caller holds them
        (the base check then hashes one layer, not the whole model)."""
        self._check(model, fingerprints)
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
    def applied(self, model: nn.Module, *, fingerprints: "Fingerprints | None" = None):
        """Context manager: the edit is applied inside and reverted bit-exactly on exit."""
        patch = self.apply(model, fingerprints=fingerprints)
        try:
            yield patch
        finally:
            patch.revert()

    def fraction_of_parameters(self, model: nn.Module) -> float:
        """Changed entries (m * d_in per module) over all unique parameters of `model`."""
        total = sum(p.numel() for p in model.parameters())
        return self.neurons.numel() * self.d_in * len(self.modules) / total

    def tensors_and_metadata(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"neurons": self.neurons.contiguous()}
        for module, (a, b) in self.factors.items():
            tensors[f"{module}.A"] = a.detach().cpu().clone(memory_format=torch.contiguous_format)
            tensors[f"{module}.B"] = b.detach().cpu().clone(memory_format=torch.contiguous_format)
        metadata = {
            "format": FORMAT, "mlsafe_version": mlsafe.__version__, "fingerprint_scheme": FINGERPRINT_SCHEME,
            "base_fingerprint": self.base_fingerprint, "model_type": self.model_type,
            "layer": str(self.layer), "modules": json.dumps(list(self.modules)),
            "hparams": json.dumps(self.hparams, sort_keys=True),
        }
        metadata["content_sha256"] = content_sha256(tensors, metadata)
        return tensors, metadata

    def to_bytes(self) -> bytes:
        """The safetensors bytes of the edit: sorted header, so equal edits give equal bytes."""
        return canonical_safetensors(*self.tensors_and_metadata())

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the edit as safetensors (atomically), with its metadata and content_sha256; no pickle.

        An existing file at `path` is replaced only when it is an mlsafe edit (a rerun) or
        `overwrite` is True: a model's weights are never clobbered by mistake.
        """
        write_edit_file(path, self.to_bytes(), (FORMAT,), "an mlsafe edit", overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "SparseEdit":
        """Read an edit written by :meth:`save`; EditFileError (a ValueError) for a file that is not
        one, or whose content does not match its content_sha256, or that is inconsistent."""
        path = Path(path)
        meta, tensors = read_edit_file(path, "an edit written by SparseEdit.save")
        if meta.get("format") != FORMAT:
            raise EditFileError(f"{path} is a safetensors file but not an mlsafe edit "
                                f"(metadata format={meta.get('format')!r}); write it with SparseEdit.save")
        corrupt = check_edit_file(path, meta, tensors, "edit")
        try:
            return cls.from_tensors(tensors, meta)
        except KeyError as err:
            raise EditFileError(f"{corrupt} (missing {err}); re-save or re-fit it") from None
        except (ValueError, TypeError) as err:
            raise EditFileError(f"{corrupt} ({err}); re-save or re-fit it") from None

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> "SparseEdit":
        """The edit that :meth:`tensors_and_metadata` describes (the checksum is the caller's to
        check); KeyError for a missing entry, ValueError for inconsistent tensors."""
        modules = tuple(json.loads(meta["modules"]))
        if set(tensors) != set(tensor_names(modules)):
            raise ValueError(f"tensors {sorted(tensors)} do not match modules {list(modules)}")
        if tensors["neurons"].dtype != torch.int64:
            raise ValueError(f"neurons are {tensors['neurons'].dtype}, not int64")
        return cls(layer=int(meta["layer"]), modules=modules, neurons=tensors["neurons"],
                   factors={m: (tensors[f"{m}.A"], tensors[f"{m}.B"]) for m in modules},
                   hparams=json.loads(meta["hparams"]),
                   base_fingerprint=meta["base_fingerprint"], model_type=meta["model_type"])


def tensor_names(modules) -> list[str]:
    """The tensors of an edit file of these modules: "neurons" and "<module>.A" / "<module>.B"."""
    return ["neurons", *(f"{m}.{x}" for m in modules for x in "AB")]


def file_format(path: str | Path) -> str | None:
    """The `format` entry of a safetensors file's metadata; None for a file that is not one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError):
        return None


def read_edit_file(path: Path, expected: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; EditFileError naming `expected` if it is not one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise EditFileError(f"{path} is not a safetensors file ({err}); expected {expected}") from None


def write_edit_file(path: str | Path, data: bytes, formats: tuple[str, ...], what: str, *,
                    overwrite: bool = False) -> None:
    """Write `data` to `path` atomically. An existing file is replaced only when its format is
    one of `formats` (a rerun) or `overwrite` is True: a model's weights are never clobbered."""
    path = Path(path)
    if path.exists() and not overwrite and file_format(path) not in formats:
        raise EditFileError(f"refusing to replace {path}: it exists and is not {what}; "
                            "choose another path or pass overwrite=True")
    write_atomic(path, data)


def check_edit_file(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor], what: str) -> str:
    """The checks of every mlsafe `what` file ("edit", "edit stack") once its format is known:
    its content_sha256 and fingerprint scheme (EditFileError, one line). Returns the
    "<what> file <path> is corrupt" prefix for the caller's own checks."""
    corrupt = f"{what} file {path} is corrupt"
    if "content_sha256" not in meta:
        raise EditFileError(f"{corrupt} or from an older mlsafe (no content_sha256); re-save or re-fit it")
    if content_sha256(tensors, meta) != meta["content_sha256"]:
        raise EditFileError(f"{corrupt}: its tensors or metadata do not match its content_sha256; "
                            "re-save or re-fit it")
    if meta.get("fingerprint_scheme") != FINGERPRINT_SCHEME:
        raise EditFileError(f"{path} was fingerprinted by scheme {meta.get('fingerprint_scheme')!r}, this "
                            f"mlsafe uses {FINGERPRINT_SCHEME!r}; re-fit the {what}")
    return corrupt


def content_sha256(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 of an edit file's content: its metadata (all keys but content_sha256, as sorted-key
    JSON) and, in name order, each tensor's name, dtype, shape and raw bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != "content_sha256"},
                                  sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the JSON header re-written with sorted keys (the library writes its
    metadata map in arbitrary order, so identical edits would differ byte-wise)."""
    raw = st_save(tensors, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # keep the data 8-byte aligned
    return len(header).to_bytes(8, "little") + header + raw[8 + n:]


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
