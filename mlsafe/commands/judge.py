"""``mlsafe judge``: label a JSONL file of completions (refusal | compliance | unclear).

Each input row needs ``lang`` (one of the 8 codes), ``prompt`` and ``response`` (strings);
every other field passes through unchanged and in order. The output rows add ``label``,
``refusal`` (bool), ``harmful`` (bool or null) and ``judge`` (overwriting fields of those
names). Prompts are read as harmful requests (the file holds attack completions), so
``harmful`` = a compliance the judge finds harmful. All rows are checked before any
judging; the output is written atomically and never over the input.
"""

from __future__ import annotations

HELP = "label completions in a JSONL file as refusal / compliance / unclear (offline judge)"
EXAMPLE = "mlsafe judge --input completions.jsonl --output judged.jsonl --judge rules+clf"

REQUIRED = ("lang", "prompt", "response")
OFFLINE = ("rules+clf", "rules", "phrase")


def add_arguments(p):
    from mlsafe.evaluate.judges import DEFAULT_REAL_JUDGE

    p.add_argument("--input", required=True, help="JSONL with at least lang, prompt, response per row")
    p.add_argument("--output", required=True, help="JSONL to write (not the input file)")
    p.add_argument("--judge", default=DEFAULT_REAL_JUDGE, choices=OFFLINE,
                   help=f"offline judge (default: {DEFAULT_REAL_JUDGE})")


def read_rows(path) -> list[dict]:
    """Parse and check every row; UserError naming file:line for the first bad one."""
    import json
    from pathlib import Path

    from mlsafe.errors import UserError
    from mlsafe.langs import LANGS

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such input file")
    rows = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{no}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{no}: a row must be a JSON object, got {type(row).__name__}")
        for key in REQUIRED:
            if key not in row:
                raise UserError(f"{path}:{no}: missing field {key!r} (rows need {', '.join(REQUIRED)})")
            if not isinstance(row[key], str):
                raise UserError(f"{path}:{no}: field {key!r} must be a string, got {type(row[key]).__name__}")
        if row["lang"] not in LANGS:
            raise UserError(f"{path}:{no}: lang {row['lang']!r} is not one of {', '.join(LANGS)}")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def run(args) -> int:
    import json
    from collections import defaultdict
    from pathlib import Path

    from mlsafe.errors import UserError
    from mlsafe.evaluate.judges import make_judge
    from mlsafe.prompts import Prompt
    from mlsafe.results import write_atomic

    src, dst = Path(args.input), Path(args.output)
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and dst.samefile(src)):
        raise UserError(f"--output {dst} is the input file; write the labels to a new file")
    rows = read_rows(src)
    judge = make_judge(args.judge)
    prompts = [Prompt(id=str(i), lang=r["lang"], text=r["prompt"], harmful=True, parallel_id=str(i))
               for i, r in enumerate(rows)]
    judgments = judge.judge(prompts, [r["response"] for r in rows])
    lines, stats = [], defaultdict(lambda: [0, 0, 0, 0])
    for row, j in zip(rows, judgments):
        out = {**row, "label": j.label, "refusal": bool(j.refusal), "harmful": j.harmful, "judge": judge.name}
        lines.append(json.dumps(out, ensure_ascii=False))
        s = stats[row["lang"]]
        s[0] += 1
        s[1] += bool(j.refusal)
        s[2] += j.label == "unclear"
        s[3] += bool(j.harmful)
    write_atomic(dst, "\n".join(lines) + "\n")
    print(f"judge {judge.name} (ASR metric: {judge.asr_metric})")
    print(f"{'lang':6s} {'n':>6s} {'refusal':>8s} {'unclear':>8s} {'harmful':>8s}")
    for lang in sorted(stats):
        n, ref, unc, harm = stats[lang]
        print(f"{lang:6s} {n:6d} {ref / n:8.3f} {unc / n:8.3f} {harm / n:8.3f}")
    print(f"[mlsafe] wrote {dst} ({len(rows)} rows)")
    return 0
