"""Export a :class:`~mlsafe.edit.SparseEdit` for use without mlsafe.

Two forms, both written atomically (a temporary sibling folder, then ``os.replace``) and
never over a folder that holds anything:

- :func:`save_merged`: the base model with the edit applied (W_S <- W_S + dW*, Theorem
  4.1), saved by ``save_pretrained`` as safetensors with its tokenizer. It loads with
  ``AutoModelForCausalLM.from_pretrained`` and differs from the base only in rows S of
  the edited projections of one layer.
- :func:`save_adapter`: the same edit as an exact PEFT LoRA adapter. The edit adds
  dW^T = B^T A^T (dW = A B is d_in x m in the paper's row-vector convention) to rows S of
  the projection's [d_ff, d_in] weight view, which is a LoRA update ``lora_B @ lora_A``
  with lora_A = A^T (r x d_in) and lora_B = B^T scattered into rows S (d_ff x r, zeros
  elsewhere), scaling lora_alpha / r = 1, restricted to the edit's layer. Phi-3's fused
  gate_up_proj stacks [gate; up] rows, so its adapter stacks both modules' factors
  (rank r_gate + r_up) with the up rows offset by d_ff; GPT-2's ``Conv1D`` c_fc gets the
  same factors with ``fan_in_fan_out=True``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mlsafe import arch
from mlsafe.edit import SparseEdit
from mlsafe.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def check_free(out_dir: str | Path) -> Path:
    """`out_dir` as a Path if it is missing or an empty folder; UserError otherwise."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; refusing to overwrite it "
                        "(choose another output folder)")
    return out


@contextmanager
def staged_folder(out_dir: str | Path):
    """Yield a fresh temporary sibling folder of `out_dir`; on success rename it to `out_dir`.

    The rename (os.replace) succeeds only while `out_dir` is missing or empty, so a folder
    that was filled in the meantime is never replaced. On any error the temporary folder
    is removed and `out_dir` is left as it was.
    """
    out = check_free(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        mask = _umask()
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.rglob("*"):      # some writers (safetensors) create 0600 files: the umask's modes
            if f.is_file():
                os.chmod(f, 0o666 & ~mask)
        try:
            os.replace(tmp, out)
        except OSError as err:
            raise UserError(f"{out} was filled while the export ran ({err.strerror}); refusing to "
                            "overwrite it (choose another output folder)") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_merged(edit: SparseEdit, model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Apply `edit` to `model`, save model (safetensors) + tokenizer into `out_dir`, revert.

    Refuses (UserError) an `out_dir` that exists and is not empty, and (ValueError, from
    SparseEdit.apply) a model that is not the edit's base. The model is bit-identical to
    before when this returns, whether or not the save succeeded.
    """
    with staged_folder(out_dir) as tmp:
        with edit.applied(model):
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"module {type(module).__name__} is not part of the model")


def lora_weights(edit: SparseEdit, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(LoraConfig keyword arguments, PEFT state dict) of the adapter equal to `edit` on `model`.

    State dict keys follow PEFT's saved format: ``base_model.model.<module path>.lora_A.weight``.
    Raises ValueError for a model that is not the edit's base, or whose projection at the
    edit's layer is not an ``nn.Linear`` or a GPT-2 ``Conv1D``.
    """
    with edit.applied(model):  # checks model_type, layer, shapes and the base fingerprint
        pass
    spec = arch.get_arch(model)
    mlp = arch.mlp(model, edit.layer)
    d_ff = arch.d_ff(model)
    rank = {m: edit.factors[m][0].shape[1] for m in edit.modules}
    if spec.fused:   # one gate_up_proj module; rows [gate; up], each module its own rank block
        groups = {spec.up: [(m, d_ff * (m == "up"), sum(rank[k] for k in edit.modules[:i]))
                            for i, m in enumerate(edit.modules)]}
        r = sum(rank.values())
        out_rows = 2 * d_ff
    else:            # one LoRA module per edited projection; ranks padded with zeros to the largest
        groups = {getattr(spec, m): [(m, 0, 0)] for m in edit.modules}
        r = max(rank.values())
        out_rows = d_ff
    conv1d = None
    tensors = {}
    for name, parts in groups.items():
        module = getattr(mlp, name)
        if not (isinstance(module, nn.Linear) or _is_conv1d(module)):
            raise ValueError(f"{spec.model_type}.{name} is a {type(module).__name__}, not an nn.Linear or "
                             "Conv1D; a PEFT LoRA adapter cannot express this edit: use save_merged")
        conv1d = _is_conv1d(module)
        lora_a = torch.zeros(r, edit.d_in, dtype=torch.float32)
        lora_b = torch.zeros(out_rows, r, dtype=torch.float32)
        for which, row_offset, col in parts:
            a, b = (t.detach().cpu().to(torch.float32) for t in edit.factors[which])
            k = a.shape[1]
            lora_a[col:col + k] = a.T
            lora_b[row_offset + edit.neurons, col:col + k] = b.T
        prefix = f"base_model.model.{_module_path(model, module)}"
        tensors[f"{prefix}.lora_A.weight"] = lora_a
        tensors[f"{prefix}.lora_B.weight"] = lora_b
    config = dict(r=r, lora_alpha=r, target_modules=sorted(groups), layers_to_transform=[edit.layer],
                  layers_pattern=spec.blocks.rsplit(".", 1)[-1], lora_dropout=0.0, bias="none",
                  fan_in_fan_out=bool(conv1d), task_type="CAUSAL_LM", use_rslora=False,
                  base_model_name_or_path=getattr(model.config, "_name_or_path", None) or None)
    return config, tensors


def save_adapter(edit: SparseEdit, model: nn.Module, out_dir: str | Path) -> Path:
    """Write `edit` as a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    Load it with ``PeftModel.from_pretrained(base_model, out_dir)``; its output equals the
    base model with the edit applied up to float rounding. The model is not modified.
    Refuses (UserError) an `out_dir` that exists and is not empty.
    """
    from peft import LoraConfig

    check_free(out_dir)
    config, tensors = lora_weights(edit, model)
    with staged_folder(out_dir) as tmp:
        LoraConfig(**config).save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return Path(out_dir)
