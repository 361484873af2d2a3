"""``mlsafe reproduce``: measure the gap, fit the edit, measure again, write results/."""

from __future__ import annotations

import re

from mlsafe.commands import add_run_args

HELP = "measure the gap, fit the edit, measure again, write results/"
EXAMPLE = "mlsafe reproduce --lang th --model organism"


def add_arguments(p):
    add_run_args(p)
    p.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="seeds of the spread block (default: the backend's, e.g. 0 1 2 for the organism)")
    p.add_argument("--layer", default=None, help="edit layer: auto or a layer index (default: chosen on "
                                                 "validation anchors)")
    p.add_argument("--rank", default=None, help="rank of the edit, a positive integer (clamped to "
                                                "min(rank, d_model, n_neurons); the summary records the "
                                                "effective rank)")
    p.add_argument("--preset", default="paper", help="edit recipe of mlsafe.presets: paper (default), best or best-kl; "
                                                     "a non-paper preset writes results/<model>/<lang>-<preset>/")
    p.add_argument("--extras", dest="extras", action="store_true", default=None,
                   help="also write the safety-neuron diagnostics and the lab grid (default: the backend's "
                        "policy: on for the organism, off for real models on CPU)")
    p.add_argument("--no-extras", dest="extras", action="store_false")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier run's folder even if this run drops some of its files or blocks")


def _int(value: str, what: str, minimum: int) -> int:
    from mlsafe.errors import UserError

    if not re.fullmatch(r"[+-]?\d+", str(value).strip()) or int(value) < minimum:
        raise UserError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_device(device: str) -> None:
    """UserError unless `device` is cpu, or cuda / cuda:N with N below the CUDA devices torch sees."""
    import torch

    from mlsafe.errors import UserError

    if device == "cpu":
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise UserError(f"unknown --device {device!r}; use cpu, cuda or cuda:N")
    n = torch.cuda.device_count()
    if n == 0:
        raise UserError(f"--device {device}: torch sees no CUDA device; use --device cpu")
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise UserError(f"--device {device}: torch sees {n} CUDA device(s), cuda:0..cuda:{n - 1}")


def check_run_args(args):
    """Validate the shared run options before any model is loaded (UserError, one line); returns
    the results folder results/<model>/<lang> (checked to be creatable and writable)."""
    from mlsafe.langs import parse_targets
    from mlsafe.results import check_writable, results_dir

    _int(args.seed, "--seed", 0)
    for s in getattr(args, "seeds", None) or []:
        _int(s, "--seeds", 0)
    check_device(args.device)
    from mlsafe.errors import UserError
    from mlsafe.pipeline import run_key

    try:
        key = run_key(parse_targets(args.lang), getattr(args, "preset", "paper"))
    except ValueError as err:
        raise UserError(f"--preset: {err}") from None
    out_dir = results_dir(args.model, key)
    check_writable(out_dir)
    return out_dir


def run(args) -> int:
    from mlsafe.pipeline import reproduce

    check_run_args(args)
    overrides = {}
    if args.layer is not None:
        overrides["layer"] = "auto" if args.layer == "auto" else _int(args.layer, "--layer (auto or an index)", 0)
    if args.rank is not None:
        overrides["rank"] = _int(args.rank, "--rank", 1)
    from mlsafe.backends import backend_for

    policy = backend_for(args.model).defaults
    default_seeds = list(policy.get("seeds", ()))  # the backend's spread, around its own main seed only
    seeds = args.seeds if args.seeds is not None else (
        default_seeds[1:] if default_seeds[:1] == [int(args.seed)] else [])
    extras = args.extras if args.extras is not None else bool(policy.get("extras", False))
    path = reproduce(args.lang, args.model, device=args.device, seed=args.seed, seeds=seeds,
                     data=args.data, extras=extras, force=args.force, preset=args.preset, **overrides)
    print(f"[mlsafe] wrote {path}")
    return 0
