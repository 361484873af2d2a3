"""``mlsafe ceiling``: how much of the refusal decision one layer can carry (activation patching).

On the validation harmful anchors (the split the edit's layer choice uses), each target-language
prompt is patched at its last token with its English parallel's values at one layer, for three
sites (see :mod:`mlsafe.ceiling`): the English safety neurons S of that layer (found on the fit
anchors exactly as the edit finds them), the whole MLP output, the residual stream. Writes
OUT/ceiling.json (per-prompt margins and per-layer means) and OUT/ceiling.png.
"""

from __future__ import annotations

HELP = "activation-patching ceiling per layer: what S, the MLP or the residual at one layer can carry"
EXAMPLE = "mlsafe ceiling qwen2.5-coder-0.5b --lang ja,th --out results/qwen2.5-coder-0.5b/ceiling"


def add_arguments(p):
    p.add_argument("model", help="a registered name (organism, qwen2.5-coder-0.5b, ...), a model folder or hub id")
    p.add_argument("--lang", default="all", help="target language code(s) with parallel anchors, or 'all' (default)")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder for ceiling.json and ceiling.png")
    p.add_argument("--data", default="auto", help="auto | fixtures | hub | a local data root (default: auto)")
    p.add_argument("--layers", default="all", help="comma-separated layer indices or 'all' (default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="the anchors' fit/validation split seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=16, help="(default: 16)")


def parse_layers(value: str, n: int) -> list[int]:
    from mlsafe.errors import UserError

    if value == "all":
        return list(range(n))
    try:
        layers = sorted({int(v) for v in value.split(",")})
    except ValueError:
        layers = [-1]
    if not layers or layers[0] < 0 or layers[-1] >= n:
        raise UserError(f"--layers must be 'all' or comma-separated integers in 0..{n - 1}, got {value!r}")
    return layers


def neuron_sets(lm, fit_harmful, fit_harmless, layers, cfg, batch_size: int) -> dict:
    """S per layer from English fit anchors (eq. 13-16), as transfer.fit finds them."""
    from mlsafe import neurons, probe, transfer

    harm = [p for p in fit_harmful if p.lang == cfg.source]
    safe = [p for p in fit_harmless if p.lang == cfg.source]
    kw = dict(position=cfg.position, what=("activations",), batch_size=batch_size, progress=True)
    a_h = probe.collect(lm.model, lm.tokenizer, transfer.chat_texts(lm.tokenizer, harm), layers, **kw)
    a_s = probe.collect(lm.model, lm.tokenizer, transfer.chat_texts(lm.tokenizer, safe), layers, **kw)
    return {layer: neurons.safety_neurons_from_moments(a_h[layer]["activations"], a_s[layer]["activations"],
                                                       tau_mag=cfg.tau_mag, tau_stat=cfg.tau_stat).s_safety
            for layer in layers}


def run(args) -> int:
    import time

    import torch

    from mlsafe import arch, ceiling, chat, export, limits, transfer
    from mlsafe.errors import UserError
    from mlsafe.evaluate.generate import format_chat, prompt_limit
    from mlsafe.evaluate.margin import start_token_sets
    from mlsafe.langs import parse_targets
    from mlsafe.models import load_model
    from mlsafe.suites import make_suite
    from mlsafe.results import write_json

    try:
        targets = parse_targets(args.lang)
    except ValueError as err:
        raise UserError(str(err)) from None
    out = export.check_free(args.out)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    lm = load_model(args.model, args.device, seed=args.seed)
    layers = parse_layers(args.layers, arch.n_layers(lm.model))
    suite = make_suite(lm, args.data, args.seed, args.device)
    targets = [t for t in targets if any(p.lang == t for p in suite.anchors_harmful)]
    if not targets:
        raise UserError(f"the {suite.name} anchors have no harmful prompts in {args.lang}")
    cfg = transfer.EditConfig(targets=targets, seed=args.seed, **dict(suite.edit_defaults or {}))
    split = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    sets = neuron_sets(lm, split.fit_harmful, split.fit_harmless, layers, cfg, args.batch_size)
    limit = prompt_limit(lm.model, lm.tokenizer)

    def ids(prompts):
        return chat.encode_all(lm.tokenizer, format_chat(lm.tokenizer, [p.text for p in prompts]), max_length=limit)

    rows, per_prompt = [], {}
    for lang in targets:
        low, src = transfer.parallel_pairs(split.val_harmful, cfg.source, [lang])
        r, c = start_token_sets(lm.tokenizer, [*suite.refusal_starts[lang], *suite.refusal_starts[cfg.source]],
                                [*suite.comply_starts[lang], *suite.comply_starts[cfg.source]])
        t1 = time.perf_counter()
        res = ceiling.patching_ceiling(lm.model, ids(low), ids(src), layers, r, c, neuron_sets=sets,
                                       pad_id=lm.tokenizer.pad_token_id or 0, batch_size=args.batch_size)
        for row in ceiling.summarize(res):
            row.update(lang=lang, n=len(low), n_neurons=int(sets[row["layer"]].numel()))
            rows.append(row)
        per_prompt[lang] = {"ids": [p.id for p in low], "target": res["target"].tolist(),
                            "source": res["source"].tolist(),
                            "patched": {f"{layer}/{site}": v.tolist() for (layer, site), v in res["patched"].items()},
                            "seconds": time.perf_counter() - t1}
    record = {"model": args.model, "targets": targets, "layers": layers, "seed": args.seed,
              "sites": list(ceiling.SITES), "position": "last prompt token (generation position)",
              "margin_strings": "suite refusal/comply starts of the language plus English's",
              "rows": rows, "per_prompt": per_prompt, "seconds": time.perf_counter() - t0}
    with export.staged_folder(out) as tmp:
        write_json(tmp / "ceiling.json", record)
        import matplotlib

        matplotlib.use("Agg")
        fig = limits.plot_ceiling(record, f"{args.model}: patched with English at one layer")
        fig.savefig(tmp / "ceiling.png", dpi=120, bbox_inches="tight")
    print(f"[mlsafe] patching ceiling of {args.model} ({time.perf_counter() - t0:.0f} s); share of the "
          "English-target margin gap closed by patching one layer:")
    print("lang layer |S|   neurons    mlp  residual")
    for lang in targets:
        for layer in layers:
            cell = {r["site"]: r["share_of_gap"] for r in rows if r["lang"] == lang and r["layer"] == layer}
            print(f"{lang:4} {layer:5} {int(sets[layer].numel()):4} " + " ".join(
                f"{cell.get(s, float('nan')):+8.2f}" for s in ("neurons", "mlp", "residual")))
    for name in ("ceiling.json", "ceiling.png"):
        print(f"[mlsafe] wrote {out / name}")
    return 0
