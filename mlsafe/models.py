"""Load a model by the name `make reproduce MODEL=...` takes, through mlsafe.backends.

- a registered backend name (mlsafe.backends.BACKENDS): ``organism``, ``organism-dense``,
  ``gemma-270m``, ``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``;
- anything else: a local folder or a hub id, loaded with ``transformers``
  (``device_map="auto"`` on CUDA so a large model spreads over GPUs, bf16 where the
  device supports it, ``trust_remote_code`` off); kind "tiny" for a folder built by
  mlsafe.tiny, "hub" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str          # what results/<name>/ is called
    kind: str          # "organism", "gemma-270m", "packaged", "tiny" (a random test model) or "hub"
    path: str | None = None
    backend: str | None = None   # the registered backend it was loaded through (mlsafe.backends)


def resolve_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda was asked for but torch sees no CUDA device; use DEVICE=cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown DEVICE {device!r}; use cpu or cuda")
    return device


def load_model(spec: str, device: str = "cpu", *, seed: int = 0) -> LoadedModel:
    """Load `spec` (see module docstring) on `device`, in eval mode."""
    from mlsafe.backends import backend_for

    device = resolve_device(device)
    return backend_for(spec).load(seed, device)


def load_transformers(spec: str, device: str, kind: str = "hub") -> LoadedModel:
    """A local folder or hub id `spec` through transformers; `kind` goes into the result."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlsafe.backends import BACKENDS
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
