"""Load a model by the name `make reproduce MODEL=...` takes.

- ``organism``: the project's own CPU model organism (trained or loaded from cache), safety
  aligned sparsely (planted safety neurons); ``organism-dense``: the same, aligned densely;
- ``gemma-270m``: the PyPI-packaged Gemma-3-270m, safety-tuned in English only;
- anything else: a local folder or a hub id, loaded with ``transformers``
  (``device_map="auto"`` on CUDA so a large model spreads over GPUs, bf16 where the
  device supports it, ``trust_remote_code`` off).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

BUILTIN = ("organism", "organism-dense", "gemma-270m")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str          # what results/<name>/ is called
    kind: str          # "organism", "gemma-270m", "tiny" (a random test model) or "hub"
    path: str | None = None


def _tiny_marker(path: Path) -> dict | None:
    marker = path / "mlsafe_tiny.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def resolve_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda was asked for but torch sees no CUDA device; use DEVICE=cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown DEVICE {device!r}; use cpu or cuda")
    return device


def load_model(spec: str, device: str = "cpu", *, seed: int = 0) -> LoadedModel:
    """Load `spec` (see module docstring) on `device`, in eval mode."""
    device = resolve_device(device)
    if spec in ("organism", "organism-dense"):
        from mlsafe.organism import load_or_train

        model, tok = load_or_train(seed=seed, variant="dense" if spec.endswith("dense") else "sparse")
        return LoadedModel(model.to(device).eval(), tok, spec, "organism")
    if spec == "gemma-270m":
        from mlsafe.gemma import load_or_tune

        model, tok = load_or_tune(seed=seed)
        return LoadedModel(model.to(device).eval(), tok, "gemma-270m", "gemma-270m")
    return _load_transformers(spec, device)


def _load_transformers(spec: str, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlsafe.results import model_slug

    path = Path(spec)
    local = path.is_dir()
    if not local and (spec.startswith((".", "/", "~")) or spec.count("/") != 1):
        raise FileNotFoundError(
            f"MODEL={spec!r} is neither an existing folder nor a hub id of the form owner/name; "
            f"built-in names are {', '.join(BUILTIN)}"
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
    kind = "tiny" if local and _tiny_marker(path) else "hub"
    return LoadedModel(model.eval(), tok, model_slug(spec), kind, str(path) if local else None)
