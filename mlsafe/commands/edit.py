"""``mlsafe edit``: fit the sparse safety edit (Algorithm 1) for one model and write it to a folder.

DIR/edit.safetensors   the edit (SparseEdit.save), tied to the base model by its fingerprint; with
                       --layers A,B,... a multi-layer stack fitted in sequence (mlsafe.stack.EditStack)
DIR/README.md          a model card: base model, layer, |S|, rank, languages, validation, how to apply
DIR/reproduce.json     versions, base fingerprint, sha256 of the inputs read, hyper-parameters,
                       validation margins before/after and first-token KL per language

The folder is written atomically and never over a folder that holds anything.
"""

from __future__ import annotations

HELP = "fit the sparse safety edit for a model; write edit.safetensors, README.md, reproduce.json"
#: --lang takes any language code when --anchors brings that language's anchors.
ANY_LANGUAGE = True
EXAMPLE = "mlsafe edit ./my-model --lang th,bn --out edits/th-bn --anchors my_anchors.jsonl"

def add_arguments(p):
    from mlsafe.presets import PRESETS

    p.add_argument("model", help="a model folder, hub id or registered name (organism, gemma-270m, ...)")
    p.add_argument("--lang", required=True, help="target language code(s), comma-separated, or 'all'")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder to write the edit into")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="edit recipe of mlsafe.presets (default: paper, the paper's as written)")
    p.add_argument("--anchors", metavar="FILE|FOLDER",
                   help="user anchors in JSONL (see mlsafe.data.anchors); default: the model's suite anchors")
    p.add_argument("--data", default="auto",
                   help="where the suite anchors come from without --anchors: auto | fixtures | hub | a data root")
    p.add_argument("--layer", default="auto", help="auto (chosen on validation anchors) or a layer index")
    p.add_argument("--layers", default=None, metavar="A,B,...",
                   help="several layers, edited in this order, each fitted with the earlier edits applied "
                        "(a multi-layer edit stack; instead of --layer)")
    p.add_argument("--rank", type=int, default=None, help="rank r of the edit (default: the preset's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")


def parse_layer(value: str) -> int | str:
    from mlsafe.errors import UserError

    if value == "auto":
        return value
    try:
        layer = int(value)
    except ValueError:
        layer = -1
    if layer < 0:
        raise UserError(f"--layer must be 'auto' or a non-negative integer, got {value!r}")
    return layer


def parse_layers(value: str | None, layer) -> tuple[int, ...] | None:
    """--layers as distinct non-negative layer indices (None without it); UserError for a bad
    list or together with an explicit --layer."""
    from mlsafe.errors import UserError
    from mlsafe.stack import check_layers

    if value is None:
        return None
    if layer != "auto":
        raise UserError("give --layer or --layers, not both")
    try:
        layers = [int(v) for v in value.split(",")]
    except ValueError:
        raise UserError(f"--layers must be comma-separated layer indices (e.g. 17,19), got {value!r}") from None
    try:
        return check_layers(layers)
    except ValueError as err:
        raise UserError(f"--layers {value}: {err}") from None


def sha256_of(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_files(model: str, anchors, data: str) -> list:
    """The files this run reads: the anchor files, a local model folder's files, and the
    fixture or local data folder's files (hub data and registered models have none here)."""
    from pathlib import Path

    from mlsafe.data.anchors import anchor_files
    from mlsafe.data.loaders import FIXTURES_DIR

    files = list(anchor_files(anchors)) if anchors else []
    if Path(model).is_dir():
        files += sorted(p for p in Path(model).rglob("*") if p.is_file())
    if not anchors and data not in ("auto", "hub"):
        root = FIXTURES_DIR if data == "fixtures" else Path(data)
        files += sorted(p for p in root.rglob("*") if p.is_file())
    return files


def validation_table(lm, edit, anchors, cfg, margin) -> dict:
    """Per-language validation scores before and after the edit: mean refusal margin on the
    held-out harmful anchors (targets and source) and harmless anchors, and first-token KL."""
    from mlsafe.evaluate import mean_by_lang
    from mlsafe.evaluate.kl import first_token_kl

    harmful = [p for p in anchors.val_harmful if p.lang in (*cfg.targets, cfg.source)]
    harmless = list(anchors.val_harmless)
    out = {}
    for name, prompts in (("margin_harmful", harmful), ("margin_harmless", harmless)):
        if not prompts:
            continue
        before = mean_by_lang(prompts, margin(lm.model, prompts))
        with edit.applied(lm.model):
            after = mean_by_lang(prompts, margin(lm.model, prompts))
        out[name] = {"before": before, "after": after}
    if harmless:
        out["first_token_kl"] = first_token_kl(lm.model, lm.tokenizer, harmless, edit)
    out["n"] = {"harmful": counts_by_lang(harmful), "harmless": counts_by_lang(harmless)}
    return out


def counts_by_lang(prompts) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(p.lang for p in prompts))


def format_table(val: dict) -> str:
    """The validation block as a short text table, one row per language."""
    from mlsafe.evaluate.metrics import lang_order

    h, s, kl = val.get("margin_harmful"), val.get("margin_harmless"), val.get("first_token_kl", {})
    langs = lang_order(set(h["before"] if h else {}) | set(s["before"] if s else {}))
    cell = lambda block, lang: (f"{block['before'][lang]:+.3f} -> {block['after'][lang]:+.3f}"  # noqa: E731
                                if block and lang in block["before"] else "-")
    rows = [("lang", "harmful margin", "harmless margin", "first-token KL")]
    rows += [(lang, cell(h, lang), cell(s, lang), f"{kl[lang]:.2e}" if lang in kl else "-") for lang in langs]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows)


def model_card(spec: str, edit, cfg, val: dict, preset: str, out) -> str:
    """The folder's README: a SparseEdit, or an EditStack (several layers fitted in sequence)."""
    import mlsafe
    from mlsafe.stack import EditStack

    targets = ", ".join(cfg.targets)
    multi = isinstance(edit, EditStack)
    steps = edit.edits if multi else (edit,)
    first = steps[0]
    layer_row = (f"| layers | {', '.join(str(e.layer) for e in steps)} (fitted in this order, each with the "
                 "earlier edits applied) |" if multi else f"| layer | {edit.layer} |")
    adapter = "" if multi else (f"\nmlsafe apply {out}/edit.safetensors {spec} --save-adapter ADAPTER_DIR   "
                                "# a PEFT LoRA adapter")
    loader = ("`from mlsafe.stack import EditStack; EditStack.load" if multi else "`SparseEdit.load")
    return f"""# Sparse safety edit for `{spec}`

A closed-form sparse weight edit (Multilingual Safety Alignment Via Sparse Weight Editing,
Theorem 4.1) that moves {targets} harmful prompts toward the model's {cfg.source} safety behaviour.
Fitted with mlsafe {mlsafe.__version__}.

| | |
|---|---|
| base model | `{spec}` ({first.model_type}) |
| base fingerprint | `{first.base_fingerprint}` |
{layer_row}
| neurons edited (S) | {' + '.join(str(e.neurons.numel()) for e in steps)} |
| modules | {', '.join(first.modules)} |
| rank | {first.factors[first.modules[0]][0].shape[1]} (requested {cfg.rank}) |
| target languages | {targets} (source {cfg.source}) |
| preset | {preset} (gamma {cfg.gamma}, lambda {cfg.lam}, tau_mag {cfg.tau_mag}, tau_stat {cfg.tau_stat}) |

## Validation (held-out anchors)

Refusal margin = log p(refusal start) - log p(compliance start) at the first response token
(positive leans to refusing): it should rise on harmful prompts and stay put on harmless ones.
First-token KL(p_base || p_edited) on harmless prompts measures how much ordinary behaviour moves.

```
{format_table(val)}
```

These are validation scores on the anchors' held-out part, not an evaluation: run
`mlsafe audit` on the merged model for refusal rates with intervals.

## How to apply

```
mlsafe apply {out}/edit.safetensors {spec} --save-merged MERGED_DIR     # a plain transformers folder{adapter}
```

In Python: {loader}("{out}/edit.safetensors").apply(model)` (returns a handle whose
`revert()` restores the weights exactly). The edit refuses any model but its base (fingerprint).
See reproduce.json for versions, input hashes and hyper-parameters.
"""


def run(args) -> int:
    import dataclasses
    import time

    import torch

    from mlsafe import export, presets, transfer
    from mlsafe.data import anchors as user_anchors
    from mlsafe.errors import UserError
    from mlsafe.evaluate.margin import default_margin
    from mlsafe.langs import parse_codes, parse_targets
    from mlsafe.models import load_model
    from mlsafe.results import write_atomic, write_json

    try:  # any language code with the user's own anchors; the paper's eight with built-in data
        targets = parse_codes(args.lang) if args.anchors else parse_targets(args.lang)
    except ValueError as err:
        hint = "" if args.anchors else " (other languages need --anchors FILE with their anchors)"
        raise UserError(f"{err}{hint}") from None
    layer = parse_layer(args.layer)
    layers = parse_layers(args.layers, layer)
    if args.rank is not None and args.rank < 1:
        raise UserError(f"--rank must be a positive integer, got {args.rank}")
    out = export.check_free(args.out)
    if args.anchors:  # cheap and user-made: check before the model loads
        harmful, harmless = user_anchors.load(args.anchors, targets=targets)
    overrides = {k: v for k, v in (("layer", layer), ("rank", args.rank)) if v is not None}
    try:   # checked before the model loads; the preset's layer choices are resolved after
        transfer.EditConfig(targets=targets, seed=args.seed, **overrides)
    except ValueError as err:
        raise UserError(str(err)) from None

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    lm = load_model(args.model, args.device, seed=args.seed)
    if args.anchors:
        margin = default_margin(lm.tokenizer, {p.lang for p in harmful + harmless})
    else:
        from mlsafe.pipeline import make_suite, margin_fn

        suite = make_suite(lm, args.data, args.seed, args.device)
        harmful, harmless = suite.anchors_harmful, suite.anchors_harmless
        missing = [t for t in targets if not any(p.lang == t for p in harmful)]
        if missing:
            raise UserError(f"the {suite.name} anchors have no harmful prompts in {missing}; "
                            "give your own with --anchors FILE")
        margin = margin_fn(suite, lm.tokenizer)
    load_s = time.perf_counter() - t0
    try:
        cfg = transfer.EditConfig(targets=targets, seed=args.seed,
                                  **{**presets.resolve(args.preset, lm.model), **overrides})
    except ValueError as err:
        raise UserError(str(err)) from None

    if layers is not None:
        from mlsafe import arch
        from mlsafe.stack import check_layers, fit_sequence

        try:   # the range needs the loaded model; checked before any forward pass
            check_layers(layers, arch.n_layers(lm.model))
        except ValueError as err:
            raise UserError(f"--layers {args.layers}: {err}") from None
    t0 = time.perf_counter()
    try:
        if layers is None:
            edit, report = transfer.fit(lm.model, lm.tokenizer, harmful, harmless, cfg, margin=margin)
            steps, reports = (edit,), [report]
        else:
            edit, reports = fit_sequence(lm.model, lm.tokenizer, harmful, harmless, cfg, layers, margin=margin)
            steps = edit.edits
    except ValueError as err:
        raise UserError(f"the fit failed: {err}") from None
    fit_s = time.perf_counter() - t0
    split = transfer.split_anchors(harmful, harmless, cfg.val_fraction, cfg.seed)
    val = validation_table(lm, edit, split, cfg, margin)

    import peft

    from mlsafe.pipeline import versions

    record = {
        "arguments": {k: v for k, v in vars(args).items() if k not in ("cmd", "debug")},
        "base_model": args.model, "base_fingerprint": steps[0].base_fingerprint, "model_type": edit.model_type,
        "versions": {**versions(), "peft": peft.__version__},
        "inputs": {str(p): sha256_of(p) for p in input_files(args.model, args.anchors, args.data)},
        "anchors": args.anchors or f"suite ({args.data})",
        "n_anchors": {"harmful": len(harmful), "harmless": len(harmless)},
        "preset": args.preset, "config": dataclasses.asdict(cfg),
        **({"hparams": edit.hparams, "layer": edit.layer, "n_neurons": int(edit.neurons.numel()),
            "candidates": reports[0].candidates} if layers is None else
           {"hparams": [e.hparams for e in steps], "layers": list(layers), "n_neurons": edit.n_neurons,
            "step_fingerprints": [e.base_fingerprint for e in steps],
            "candidates": [r.candidates for r in reports]}),
        "validation": val,
        "timing": {"load_seconds": load_s, "fit_seconds": fit_s},
    }
    with export.staged_folder(out) as tmp:
        edit.save(tmp / "edit.safetensors")
        write_atomic(tmp / "README.md", model_card(args.model, edit, cfg, val, args.preset, out))
        write_json(tmp / "reproduce.json", record)
    where = (f"layer {edit.layer}, {edit.neurons.numel()} neurons" if layers is None
             else f"layers {','.join(map(str, layers))} (in sequence), {edit.n_neurons} neurons")
    print(f"[mlsafe] edit of {args.model}: {where}, rank {cfg.rank}, targets {','.join(targets)}")
    print(format_table(val))
    for name in ("edit.safetensors", "README.md", "reproduce.json"):
        print(f"[mlsafe] wrote {out / name}")
    return 0
