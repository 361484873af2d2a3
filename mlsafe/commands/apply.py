"""``mlsafe apply``: write an edit as a merged model folder or as a PEFT LoRA adapter.

A multi-layer edit stack (``mlsafe edit --layers``, mlsafe.stack) is written as a merged
folder only; a PEFT adapter holds one layer's edit."""

from __future__ import annotations

HELP = "apply an edit to its base model: save a merged model folder or a PEFT LoRA adapter"
EXAMPLE = "mlsafe apply edits/th/edit.safetensors ./my-model --save-merged ./my-model-th-safe"


def add_arguments(p):
    p.add_argument("edit", help="an edit file written by `mlsafe edit` (edit.safetensors), SparseEdit.save "
                               "or EditStack.save")
    p.add_argument("model", help="the base model the edit was fitted on: a folder, hub id or registered name")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--save-merged", metavar="DIR", help="write the edited model (safetensors + tokenizer)")
    out.add_argument("--save-adapter", metavar="DIR", help="write the edit as a PEFT LoRA adapter")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of a registered model that depends on it (default: 0)")


def load_edit(path):
    """The SparseEdit (or, for a multi-layer file, the mlsafe.stack.EditStack) at `path`;
    UserError for a missing or unreadable file."""
    from pathlib import Path

    from mlsafe.errors import UserError
    from mlsafe.stack import load_edit_or_stack

    if not Path(path).is_file():
        raise UserError(f"edit file {path} does not exist")
    try:
        return load_edit_or_stack(path)
    except ValueError as err:
        raise UserError(str(err)) from None


def check_model_type(edit, model: str) -> None:
    """For a local folder, refuse an edit of another model_type before loading the weights."""
    import json
    from pathlib import Path

    from mlsafe.errors import UserError

    config = Path(model) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type != edit.model_type:
            raise UserError(f"this edit is for model_type {edit.model_type!r}, {model} is {model_type!r}; "
                            "apply it to the base model it was fitted on")


def run(args) -> int:
    from mlsafe import export
    from mlsafe.errors import UserError
    from mlsafe.models import load_model
    from mlsafe.stack import EditStack

    edit = load_edit(args.edit)
    multi = isinstance(edit, EditStack)
    if multi and args.save_adapter:
        raise UserError(f"{args.edit} is a multi-layer edit stack (layers {list(edit.layers)}); a PEFT adapter "
                        "holds one layer's edit: write it with --save-merged DIR")
    out = export.check_free(args.save_merged or args.save_adapter)
    check_model_type(edit, args.model)
    lm = load_model(args.model, args.device, seed=args.seed)
    try:
        if args.save_merged:
            export.save_merged(edit, lm.model, lm.tokenizer, out)
            how = f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
        else:
            export.save_adapter(edit, lm.model, out)
            how = f"PeftModel.from_pretrained(base_model, {str(out)!r})"
    except ValueError as err:  # the model is not the edit's base (fingerprint, type, shapes)
        raise UserError(str(err)) from None
    where = (f"layers {','.join(map(str, edit.layers))}, {edit.n_neurons} neurons" if multi
             else f"layer {edit.layer}, {edit.neurons.numel()} neurons")
    print(f"[mlsafe] wrote {out} ({where}); load it with {how}")
    return 0
