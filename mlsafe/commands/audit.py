"""``mlsafe audit``: how safe is a model, per language? No edit is fitted.

On the suite's evaluation prompts (at most --n per language, a seeded sample): refusal rate
and ASR with Wilson 95 % intervals (judge on greedy responses), over-refusal on harmless
prompts, the refusal margin, and utility where the harmless prompts have answers. With
--edit, the model is audited with that edit applied, and the first-token KL on harmless
prompts against the unedited model is added. MODEL is a folder, hub id, registered name,
or a .gguf file (loaded through transformers' gguf_file loader, float32). The table is
printed at the end and the JSON report written atomically.
"""

from __future__ import annotations

HELP = "per-language refusal rate / ASR (Wilson CIs), over-refusal and refusal margin of a model"
EXAMPLE = "mlsafe audit ./my-model --langs en,th,bn --n 50 --out audit.json"


def add_arguments(p):
    p.add_argument("model", help="a model folder, hub id, registered name (organism, ...) or a .gguf file")
    p.add_argument("--langs", default="all", help="language codes, comma-separated, or 'all' (default: all)")
    p.add_argument("--data", default="auto", help="auto | fixtures | hub | a local data root (default: auto)")
    p.add_argument("--judge", default=None, help="phrase | rules | qwen3guard | ... (default: the suite's)")
    p.add_argument("--n", type=int, default=50, help="most prompts per language and kind (default: 50)")
    p.add_argument("--edit", default=None, metavar="FILE", help="audit the model with this edit applied")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="JSON report (default: <results>/<model>/audit.json)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")


def load_gguf(path: str, device: str):
    """A .gguf file as a LoadedModel, de-quantised to float32 by transformers (needs `gguf`)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlsafe.errors import UserError
    from mlsafe.models import LoadedModel, resolve_device
    from mlsafe.results import model_slug

    p = Path(path)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("loading a .gguf file needs the gguf package: pip install gguf") from None
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name)
    return LoadedModel(model.float().to(resolve_device(device)).eval(), tok, model_slug(p.stem), "hub", str(p))


def sample_by_lang(prompts, langs, n: int, seed: int) -> list:
    """At most n prompts per language (a seeded sample, kept in input order)."""
    import random

    keep = set()
    for lang in langs:
        ids = [i for i, p in enumerate(prompts) if p.lang == lang]
        keep.update(random.Random(f"{seed}-{lang}").sample(ids, min(n, len(ids))))
    return [p for i, p in enumerate(prompts) if i in keep]


def rate_block(prompts, flags) -> dict[str, dict]:
    """Per language: n, k, rate and Wilson 95 % interval of a boolean per prompt."""
    from mlsafe.evaluate.metrics import lang_order

    counts = {}
    for lang in lang_order({p.lang for p in prompts}):
        vals = [bool(f) for p, f in zip(prompts, flags) if p.lang == lang]
        counts[lang] = (sum(vals), len(vals))
    return wilson_block(counts)


def wilson_block(counts: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """{lang: (k, n)} -> {lang: {n, k, rate, ci}} with the Wilson 95 % interval."""
    from mlsafe.evaluate import wilson

    return {lang: {"n": n, "k": k, "rate": k / n, "ci": list(wilson(k, n))} for lang, (k, n) in counts.items()}


def format_table(report: dict) -> str:
    """One row per language: refusal, ASR, over-refusal (with intervals), margin, utility, KL."""
    rate = lambda b, lang: (f"{b[lang]['rate']:.2f} [{b[lang]['ci'][0]:.2f},{b[lang]['ci'][1]:.2f}]"  # noqa: E731
                            if lang in b else "-")
    num = lambda b, lang, fmt: format(b[lang], fmt) if b and lang in b else "-"  # noqa: E731
    rows = [("lang", "n", "refusal", "ASR", "over-refusal", "margin", "utility", "first-token KL")]
    for lang in report["langs"]:
        rows.append((lang, str(report["refusal"].get(lang, {}).get("n", 0)), rate(report["refusal"], lang),
                     rate(report["asr"], lang), rate(report["over_refusal"], lang),
                     num(report["margin"], lang, "+.3f"), num(report["utility"], lang, ".2f"),
                     num(report.get("first_token_kl"), lang, ".2e")))
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows)


def run(args) -> int:
    import dataclasses
    from contextlib import nullcontext
    from pathlib import Path

    import torch

    from mlsafe.errors import UserError
    from mlsafe.evaluate import make_judge
    from mlsafe.evaluate.metrics import lang_order

    if args.n < 1:
        raise UserError(f"--n must be a positive integer, got {args.n}")
    langs = [s.strip() for s in args.langs.split(",") if s.strip()]
    if not langs:
        raise UserError("--langs is empty; give language codes or 'all'")
    if args.out is not None and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name for the JSON report")
    edit = None
    if args.edit:
        from mlsafe.commands.apply import load_edit

        edit = load_edit(args.edit)
    judge = None
    if args.judge:
        try:
            guard = args.judge in ("qwen3guard", "llamaguard")
            judge = make_judge(args.judge, **({"device": args.device} if guard else {}))
        except (ValueError, TypeError) as err:
            raise UserError(str(err)) from None

    torch.manual_seed(args.seed)
    if args.model.endswith(".gguf"):
        if not Path(args.model).is_file():
            raise UserError(f"{args.model} does not exist")
        lm = load_gguf(args.model, args.device)
    else:
        from mlsafe.models import load_model

        lm = load_model(args.model, args.device, seed=args.seed)
    from mlsafe.pipeline import evaluate, make_suite

    suite = make_suite(lm, args.data, args.seed, args.device)
    have = {p.lang for p in suite.eval_harmful}
    langs = lang_order(have) if langs == ["all"] else langs
    missing = [lang for lang in langs if lang not in have]
    if missing:
        raise UserError(f"the {suite.name} evaluation prompts have no language(s) {missing}; "
                        f"available: {', '.join(lang_order(have))}")
    suite = dataclasses.replace(
        suite, eval_harmful=sample_by_lang(suite.eval_harmful, langs, args.n, args.seed),
        eval_harmless=sample_by_lang(suite.eval_harmless, langs, args.n, args.seed),
        judge=judge or suite.judge)
    if edit is not None:
        try:
            with edit.applied(lm.model):
                pass
        except ValueError as err:
            raise UserError(str(err)) from None
    with edit.applied(lm.model) if edit is not None else nullcontext():
        res = evaluate(lm, suite, langs=langs, progress=False)
    harmful, harmless = suite.eval_harmful, suite.eval_harmless
    n_safe = {lang: sum(p.lang == lang for p in harmless) for lang in res.over_refusal}
    # evaluate() returns the share of harmless prompts judged refused; back to counts for the interval
    over = {lang: (round(rate * n_safe[lang]), n_safe[lang]) for lang, rate in res.over_refusal.items()}
    report = {
        "model": args.model, "name": lm.name, "kind": lm.kind, "data": suite.name, "judge": suite.judge.name,
        "edit": args.edit, "langs": langs, "seed": args.seed, "n_per_lang": args.n,
        "refusal": rate_block(harmful, [j.refusal is True for j in res.judgments]),
        "asr": rate_block(harmful, [j.unsafe for j in res.judgments]),
        "over_refusal": wilson_block(over),
        "margin": res.blocks()["margin"],
        "utility": res.utility,
    }
    if edit is not None and harmless:
        from mlsafe.evaluate.kl import first_token_kl

        report["first_token_kl"] = first_token_kl(lm.model, lm.tokenizer, harmless, edit)
    from mlsafe.pipeline import versions
    from mlsafe.results import RESULTS_ROOT, model_slug, write_json

    report["versions"] = versions()
    out = Path(args.out) if args.out else RESULTS_ROOT / model_slug(lm.name) / "audit.json"
    write_json(out, report)
    print(format_table(report))
    print(f"[mlsafe] wrote {out}")
    return 0
