"""The registry of model backends: the names `MODEL=...` takes, and what each one means.

A `Backend` says how to load a model (`load(seed, device) -> LoadedModel`), which suite
(data, judge, margin strings) goes with it, named as a lazily imported "module:function"
with the signature `(lm, data, seed, device) -> Suite`, and its run defaults (the edit
preset, the seeds, and which stages are affordable on CPU). The pattern is PEFT's
`register_peft_method`: one `register_backend` call per entry, looked up by name.

Registered here: organism, organism-dense (the CPU model organism, sparsely / densely
aligned), gemma-270m (PyPI-packaged Gemma-3-270m, English-only safety tune) and the
PyPI-packaged Qwen2.5-Coder-0.5B/1.5B-Instruct GGUFs (mlsafe.packaged). Any other spec
is a local folder or a hub id (`backend_for`): kind "tiny" for a folder made by
mlsafe.tiny (it has the marker file), "hub" otherwise, with the real-data suite.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from mlsafe.models import LoadedModel

#: EditConfig preset name "default": transfer.EditConfig's own defaults.
_CPU_SMALL = {"edit_preset": "default", "seeds": (0, 1, 2), "baselines": True, "extras": True}
_CPU_SLOW = {"edit_preset": "default", "seeds": (0,), "baselines": False, "extras": False}
#: A real instruct model on CPU: generation dominates, so the random-neuron control gets
#: margins for every draw but an ASR (with paired tests) for one draw only.
_CPU_REAL = {**_CPU_SLOW, "n_random": 3, "n_random_asr": 1}


@dataclass(frozen=True)
class Backend:
    """A model name and how to load it, evaluate it and run it (module docstring)."""

    name: str
    kind: str                                   # LoadedModel.kind of what `load` returns
    load: Callable[[int, str], LoadedModel]     # load(seed, device)
    suite: str                                  # "module:function", (lm, data, seed, device) -> Suite
    defaults: dict = field(default_factory=dict)

    def suite_factory(self) -> Callable:
        """The suite function named by `suite`, imported now; ImportError naming it if absent."""
        module, _, attr = self.suite.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ImportError(f"backend {self.name!r}: its suite factory {self.suite!r} cannot be imported "
                              f"({err})") from err


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add `backend` under its name; a name may be registered once."""
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    if backend.suite.count(":") != 1:
        raise ValueError(f"backend {backend.name!r}: suite must be 'module:function', got {backend.suite!r}")
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str | None) -> Backend | None:
    """The registered backend called `name`, or None."""
    return BACKENDS.get(name) if name is not None else None


def backend_for(spec: str) -> Backend:
    """The registered backend `spec`, else the folder/hub fallback for it ("tiny" for a
    folder with mlsafe.tiny's marker file, "hub" otherwise). Nothing is loaded here."""
    from mlsafe import tiny
    from mlsafe.models import load_transformers

    registered = get_backend(spec)
    if registered is not None:
        return registered
    kind = "tiny" if tiny.is_tiny(spec) else "hub"
    return Backend(spec, kind, lambda seed, device: load_transformers(spec, device, kind=kind),
                   "mlsafe.suites:real_data_suite",
                   dict(_CPU_SMALL if kind == "tiny" else _CPU_SLOW))


# ----------------------------------------------------------------------------- loaders
def _organism(name: str, variant: str, seed: int, device: str) -> LoadedModel:
    from mlsafe.organism import load_or_train

    model, tok = load_or_train(seed=seed, variant=variant)
    return LoadedModel(model.to(device).eval(), tok, name, "organism", backend=name)


def _gemma(seed: int, device: str) -> LoadedModel:
    from mlsafe.gemma import load_or_tune

    model, tok = load_or_tune(seed=seed)
    return LoadedModel(model.to(device).eval(), tok, "gemma-270m", "gemma-270m", backend="gemma-270m")


def _packaged(spec_name: str, seed: int, device: str) -> LoadedModel:
    """A mlsafe.packaged GGUF backbone in float32 (no training: `seed` does not change it)."""
    from mlsafe import packaged

    spec = getattr(packaged, spec_name)
    model, tok = packaged.load(spec)
    return LoadedModel(model.to(device).eval(), tok, spec.key, "packaged", backend=spec.key)


register_backend(Backend("organism", "organism", partial(_organism, "organism", "sparse"),
                         "mlsafe.suites:organism_backend_suite", dict(_CPU_SMALL)))
register_backend(Backend("organism-dense", "organism", partial(_organism, "organism-dense", "dense"),
                         "mlsafe.suites:organism_backend_suite", dict(_CPU_SMALL)))
register_backend(Backend("gemma-270m", "gemma-270m", _gemma, "mlsafe.suites:gemma_suite", dict(_CPU_SLOW)))
register_backend(Backend("qwen2.5-coder-0.5b", "packaged", partial(_packaged, "QWEN_CODER_05B"),
                         "mlsafe.data.real:real_model_suite", dict(_CPU_REAL)))
register_backend(Backend("qwen2.5-coder-1.5b", "packaged", partial(_packaged, "QWEN_CODER_15B"),
                         "mlsafe.data.real:real_model_suite", dict(_CPU_REAL)))
