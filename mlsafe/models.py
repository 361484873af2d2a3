"""Load a model by the name `make reproduce MODEL=...` takes, through mlsafe.backends.

- a registered backend name (mlsafe.backends.BACKENDS): ``organism``, ``organism-dense``,
  ``gemma-270m``, ``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``;
- anything else: a local folder or a hub id, loaded with ``transformers``
  (mlsafe.backends.load_transformers: ``device_map="auto"`` on CUDA so a large model spreads
  over GPUs, bf16 where the device supports it, ``trust_remote_code`` off); kind "tiny" for
  a folder built by mlsafe.tiny, "hub" otherwise.

`LoadedModel` and `load_transformers` live in mlsafe.backends (the layer below, which this
module reads) and are importable from here.
"""

from __future__ import annotations

import torch

from mlsafe.backends import LoadedModel, backend_for, load_transformers

__all__ = ["LoadedModel", "load_model", "load_transformers", "resolve_device"]


def resolve_device(device: str) -> str:
    """`device` if torch can use it ("cpu", "cuda", "cuda:N"); RuntimeError/ValueError otherwise."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda was asked for but torch sees no CUDA device; use DEVICE=cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown DEVICE {device!r}; use cpu or cuda")
    return device


def load_model(spec: str, device: str = "cpu", *, seed: int = 0) -> LoadedModel:
    """Load `spec` (see module docstring) on `device`, in eval mode."""
    device = resolve_device(device)
    return backend_for(spec).load(seed, device)
