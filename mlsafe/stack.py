"""Multi-layer edits fitted in sequence (issue 13): an ordered stack of SparseEdits.

:func:`fit_sequence` fits one :class:`~mlsafe.edit.SparseEdit` per layer, in the given order,
each by :func:`mlsafe.transfer.fit` (Theorem 4.1 at that layer) on statistics collected while
the earlier edits are applied: edit k solves eq. 4-8 for the MLP inputs X_low, X_en and X_safe
of the model already edited at layers 0..k-1 (an edit at layer l changes the inputs of every
later layer, so statistics of the unedited model would be stale there).

An :class:`EditStack` holds the fitted edits in that order. Edit k's base_fingerprint is
:func:`mlsafe.edit.fingerprint` of the partially edited model (edits 0..k-1 applied), which
hashes every weight, so applying the steps in order verifies each one against the state it
was solved for; the same edits applied out of order, on another model, or on a model with
other edits applied are refused with one line. Applying and reverting are bit-exact (each
step is a :class:`~mlsafe.edit.RowPatch`; steps are reverted last first).

File format: ONE safetensors file, no pickle. A stack of several steps is written as format
``mlsafe.EditStack``: step k's tensors under ``"<k>.<name>"`` (the names a single edit file
uses: ``neurons``, ``gate.A``, ...), the metadata of every step exactly as
:meth:`SparseEdit.save` writes it (with that step's own content_sha256) as a JSON list under
``steps``, and a ``content_sha256`` over the whole content (every tensor's name, dtype, shape
and bytes and all other metadata; :func:`mlsafe.edit.content_sha256`), checked on load. A
one-step stack is saved as a plain single-edit file (the same bytes as SparseEdit.save), and
:meth:`EditStack.load` reads either format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import mlsafe
from mlsafe import arch, edit as edit_mod
from mlsafe.edit import FINGERPRINT_SCHEME, EditFileError, RowPatch, SparseEdit, content_sha256
from mlsafe.prompts import Prompt

FORMAT = "mlsafe.EditStack"


def check_layers(layers: Sequence[int], n_layers: int | None = None) -> tuple[int, ...]:
    """`layers` as a tuple of distinct non-negative ints (below `n_layers` when given);
    ValueError naming the problem otherwise."""
    try:
        out = tuple(int(v) for v in layers)
    except (TypeError, ValueError):
        raise ValueError(f"layers must be integers, got {list(layers)!r}") from None
    if not out:
        raise ValueError("an edit stack needs at least one layer")
    if any(isinstance(v, bool) or int(v) != v for v in layers):
        raise ValueError(f"layers must be integers, got {list(layers)!r}")
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise ValueError(f"layers {dup} appear more than once; each layer can be edited once in a stack")
    bad = [v for v in out if v < 0 or (n_layers is not None and v >= n_layers)]
    if bad:
        where = f"this model has layers 0..{n_layers - 1}" if n_layers is not None else "layers are >= 0"
        raise ValueError(f"layers {bad} are out of range: {where}")
    return out


class StackPatch:
    """The applied steps of an EditStack; ``revert()`` restores them last first, bit-exactly
    (a second call does nothing)."""

    def __init__(self, patches: list[RowPatch]):
        self.patches = patches

    def revert(self) -> None:
        while self.patches:
            self.patches.pop().revert()


@dataclass(frozen=True, eq=False)
class EditStack:
    """SparseEdits at distinct layers, in fitting order: edit k was solved on the base model
    with edits 0..k-1 applied (its base_fingerprint is that model's)."""

    edits: tuple[SparseEdit, ...]

    def __post_init__(self):
        edits = tuple(self.edits)
        object.__setattr__(self, "edits", edits)
        if not edits or not all(isinstance(e, SparseEdit) for e in edits):
            raise ValueError("an EditStack needs at least one SparseEdit (and only SparseEdits)")
        check_layers([e.layer for e in edits])
        types = {e.model_type for e in edits}
        if len(types) != 1:
            raise ValueError(f"the edits of a stack must be for one model_type, got {sorted(types)}")
        d_in = {e.d_in for e in edits}
        if len(d_in) != 1:
            raise ValueError(f"the edits of a stack must share d_in, got {sorted(d_in)}")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(e.layer for e in self.edits)

    @property
    def n_neurons(self) -> int:
        """Neurons rewritten over all steps (each step's |S|, summed: the layers differ)."""
        return sum(int(e.neurons.numel()) for e in self.edits)

    @property
    def model_type(self) -> str:
        return self.edits[0].model_type

    def fraction_of_parameters(self, model: nn.Module) -> float:
        """Changed entries over all unique parameters of `model` (the steps' fractions summed:
        they change disjoint rows, at different layers)."""
        return sum(e.fraction_of_parameters(model) for e in self.edits)

    def apply(self, model: nn.Module) -> StackPatch:
        """Apply the steps in order (each checks the fingerprint of the model as the earlier
        steps left it); returns a handle whose .revert() restores the model exactly. If step k
        is refused or fails, steps before k are reverted before the error propagates."""
        patches: list[RowPatch] = []
        n = len(self.edits)
        try:
            for k, e in enumerate(self.edits):
                try:
                    patches.append(e.apply(model))
                except ValueError as err:
                    state = f"with steps 1..{k} of this stack applied" if k else "unedited"
                    raise ValueError(
                        f"refusing to apply edit stack step {k + 1} of {n} (layer {e.layer}): it applies only "
                        f"to the base model {state} (steps go in fitting order, layers {list(self.layers)}); "
                        f"{err}") from None
        except BaseException:
            StackPatch(patches).revert()
            raise
        return StackPatch(patches)

    @contextmanager
    def applied(self, model: nn.Module):
        """Context manager: every step applied inside, all reverted bit-exactly on exit."""
        patch = self.apply(model)
        try:
            yield patch
        finally:
            patch.revert()

    def to_bytes(self) -> bytes:
        """The file's bytes (canonical: equal stacks give equal bytes); a one-step stack is
        that step's single-edit file."""
        if len(self.edits) == 1:
            return self.edits[0].to_bytes()
        tensors, steps = {}, []
        for k, e in enumerate(self.edits):
            t, meta = e.tensors_and_metadata()
            tensors.update({f"{k}.{name}": v for name, v in t.items()})
            steps.append(meta)
        metadata = {"format": FORMAT, "mlsafe_version": mlsafe.__version__, "fingerprint_scheme": FINGERPRINT_SCHEME,
                    "model_type": self.model_type, "layers": json.dumps(list(self.layers)),
                    "steps": json.dumps(steps, sort_keys=True)}
        metadata["content_sha256"] = content_sha256(tensors, metadata)
        return edit_mod.canonical_safetensors(tensors, metadata)

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the stack as one safetensors file, atomically. An existing file is replaced
        only when it is an mlsafe edit or edit stack (a rerun) or `overwrite` is True."""
        edit_mod.write_edit_file(path, self.to_bytes(), (FORMAT, edit_mod.FORMAT), "an mlsafe edit or edit stack",
                                 overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "EditStack":
        """Read a file written by :meth:`save` (or a single edit by SparseEdit.save, as a one-step
        stack). EditFileError (a ValueError, one line) for a file that is not one, whose content
        does not match its content_sha256, or that is inconsistent."""
        path = Path(path)
        meta, tensors = edit_mod.read_edit_file(path, "an edit stack written by EditStack.save (re-save or re-fit it)")
        if meta.get("format") == edit_mod.FORMAT:
            return cls((SparseEdit.load(path),))
        if meta.get("format") != FORMAT:
            raise EditFileError(f"{path} is a safetensors file but not an mlsafe edit stack "
                                f"(metadata format={meta.get('format')!r}); write it with EditStack.save")
        corrupt = edit_mod.check_edit_file(path, meta, tensors, "edit stack")
        try:
            steps = json.loads(meta["steps"])
            edits = [_step(tensors, k, m) for k, m in enumerate(steps)]
            used = {f"{k}.{name}" for k, e in enumerate(edits) for name in edit_mod.tensor_names(e.modules)}
            if used != set(tensors):
                raise ValueError(f"tensors {sorted(set(tensors) - used)} belong to no step")
            stack = cls(tuple(edits))
            if list(stack.layers) != json.loads(meta["layers"]) or stack.model_type != meta["model_type"]:
                raise ValueError("the steps do not match the file's layers/model_type")
            return stack
        except KeyError as err:
            raise EditFileError(f"{corrupt} (missing {err}); re-save or re-fit it") from None
        except (ValueError, TypeError) as err:
            raise EditFileError(f"{corrupt} ({err}); re-save or re-fit it") from None


def load_edit_or_stack(path: str | Path) -> SparseEdit | EditStack:
    """The EditStack in a stack file (format mlsafe.EditStack), else ``SparseEdit.load(path)``
    (a single edit, with SparseEdit.load's errors for anything else)."""
    return EditStack.load(path) if edit_mod.file_format(path) == FORMAT else SparseEdit.load(path)


def _step(tensors: dict[str, torch.Tensor], k: int, meta: dict) -> SparseEdit:
    """Step k of a stack file: its tensors and metadata as SparseEdit.save writes them, checked
    against the step's own content_sha256, rebuilt as a SparseEdit (which validates shapes)."""
    prefix = f"{k}."
    own = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    if meta.get("format") != edit_mod.FORMAT or content_sha256(own, meta) != meta.get("content_sha256"):
        raise ValueError(f"step {k + 1} does not match its own content_sha256")
    return SparseEdit.from_tensors(own, meta)


def fit_sequence(model, tokenizer, harmful: Sequence[Prompt], harmless: Sequence[Prompt], cfg, layers: Sequence[int],
                 *, margin=None, progress: bool = False, start: EditStack | None = None):
    """Fit one edit per layer of `layers`, in that order, each on the model with the earlier
    ones applied: step k is ``transfer.fit(model, ..., dataclasses.replace(cfg, layer=layers[k]))``
    (statistics, neuron set and Theorem 4.1 solve at that layer) run inside the applied edits
    0..k-1. Returns (EditStack, [FitReport per new step]); the model is left unedited.

    `start`: an already fitted stack to continue (its steps are applied first and kept as the
    first steps of the result; their reports are not repeated), so stacks that share a prefix
    fit it once. ValueError (before any forward pass) for an empty list, a repeated layer
    (also one of `start`'s) or one outside the model's layers.
    """
    from mlsafe import transfer

    prefix = start.edits if start is not None else ()
    layers = check_layers([*(e.layer for e in prefix), *layers], arch.n_layers(model))[len(prefix):]
    if not layers:
        raise ValueError("fit_sequence needs at least one layer to fit")
    edits, reports = list(prefix), []
    with contextlib.ExitStack() as applied:
        if start is not None:
            applied.enter_context(start.applied(model))
        for k, layer in enumerate(layers):
            e, report = transfer.fit(model, tokenizer, harmful, harmless, dataclasses.replace(cfg, layer=layer),
                                     margin=margin, progress=progress)
            edits.append(e)
            reports.append(report)
            if k + 1 < len(layers):
                applied.enter_context(e.applied(model))
    return EditStack(tuple(edits)), reports
