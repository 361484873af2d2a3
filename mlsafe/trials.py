"""Validation trials of edit recipes (issue 13's searches), on anchors and validation anchors only.

The search scripts (scripts/edit_search.py, stack_search.py, kl_sweep.py, lead_trials.py) share:

* :func:`load_search`: the model (seeded), its suite, the refusal-margin function, the anchors
  split by :func:`mlsafe.transfer.split_anchors` (the split an edit's own layer choice uses) and
  the unedited validation margins (:func:`mlsafe.transfer.validation_margins`: target harmful,
  harmless, source harmful);
* :func:`validation_trial`: one trial of a list of edits applied together (a single edit, or an
  :class:`mlsafe.stack.EditStack`'s steps in fitting order), one row: the validation margin gains
  (:func:`mlsafe.transfer.score_gains`; score = target gain - any harmless gain - any source loss),
  optionally the share of the validation gap (English minus target harmful margin) the target gain
  closes, the margins after, and the first-token KL(p_base || p_edited) (mlsafe.evaluate.kl) on
  every harmless validation anchor, |S| and the share of parameters changed. The model is left
  as it was (every edit is reverted bit-exactly);
* :class:`TrialLog`: the trials of one search in one json file, rewritten atomically after each
  trial with ``complete: false`` and at the end with ``complete: true``, so a stopped search
  keeps what it measured.

No evaluation prompt (suite.eval_*) is read here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlsafe import transfer
from mlsafe.edit import SparseEdit
from mlsafe.results import write_json

#: The three validation groups of transfer.validation_margins, in its order.
GROUPS = ("target", "harmless", "source")
#: validation_trial's `kl` choices: None (not measured), "by_lang" (per-language means only),
#: "mean" (per-language means and the mean over every harmless validation anchor).
KL_MODES = (None, "by_lang", "mean")


@dataclass
class Search:
    """What every trial of one search reads: model, suite, margin function, split, margins before."""

    lm: Any                       # mlsafe.models.LoadedModel
    suite: Any                    # mlsafe.suites.Suite
    margin: transfer.MarginFn
    cfg: transfer.EditConfig      # targets, source, seed and val_fraction of the split
    anchors: transfer.Anchors
    before: list[float]           # validation_margins of the unedited model (GROUPS order)

    @property
    def gap(self) -> float:
        """The validation gap: English minus target-language harmful margin, unedited."""
        return self.before[2] - self.before[0]

    def before_dict(self) -> dict[str, float]:
        return dict(zip(GROUPS, self.before))

    def before_line(self) -> str:
        t, s, e = self.before
        return f"validation margins before: target {t:+.3f} harmless {s:+.3f} source {e:+.3f}"


def load_search(model_spec: str, data: str, seed: int, targets: Sequence[str]) -> Search:
    """Load `model_spec` on CPU (torch seeded with `seed`), its suite from `data`, the margin
    function, the anchors split by transfer.split_anchors (EditConfig's val_fraction, `seed`)
    and the unedited validation margins. Bad `targets` fail (ValueError) before the model loads."""
    from mlsafe.models import load_model
    from mlsafe.suites import make_suite, margin_fn

    cfg = transfer.EditConfig(targets=targets, seed=seed)
    torch.manual_seed(seed)
    lm = load_model(model_spec, "cpu", seed=seed)
    suite = make_suite(lm, data, seed, "cpu")
    margin = margin_fn(suite, lm.tokenizer)
    anchors = transfer.split_anchors(suite.anchors_harmful, suite.anchors_harmless, cfg.val_fraction, cfg.seed)
    before = transfer.validation_margins(lm.model, anchors, cfg, margin)
    return Search(lm, suite, margin, cfg, anchors, before)


def add_search_arguments(ap, *, what: str, layer: int | None = 17) -> None:
    """The arguments every validation-search script takes: model, --data, --lang, --seed, --out
    (folder of `what`, default results/<model>/search) and, with a `layer` default, --layer and
    the required --stats-cache of scripts/edit_search.py."""
    ap.add_argument("model")
    ap.add_argument("--data", default="auto")
    ap.add_argument("--lang", default="zh,ja,th")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help=f"folder for {what} (default results/<model>/search)")
    if layer is not None:
        ap.add_argument("--layer", type=int, default=layer)
        ap.add_argument("--stats-cache", required=True, help="scripts/edit_search.py's --stats-cache file")


def load_stats(path: str | Path, layer: int) -> dict:
    """Every layer's LayerStats of scripts/edit_search.py's --stats-cache file (fused pass),
    checked to hold `layer`; a missing file, another layer or a separate-pass cache is one line
    naming the fix."""
    from mlsafe.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--stats-cache {path} does not exist: run scripts/edit_search.py --stats-cache {path} first")
    stats = torch.load(path, weights_only=False)
    if layer not in stats:
        raise UserError(f"--stats-cache {path} holds layers {sorted(stats)}, not --layer {layer}")
    if stats[layer].paired.yty is None:
        raise UserError(f"--stats-cache {path} is not from the fused statistics pass (no X_en^T X_en)")
    return stats


def layer_search(args, *, every_layer: bool = False):
    """(LayerStats, Search) of a layer-search script's parsed `add_search_arguments`: the cached
    statistics of --layer (checked first, before the model loads; with `every_layer`, the whole
    {layer: LayerStats} of the cache instead), then load_search; prints the validation margins
    before any edit. A bad argument exits with one line."""
    from mlsafe.errors import UserError

    try:
        stats = load_stats(args.stats_cache, args.layer)
        search = load_search(args.model, args.data, args.seed, args.lang.split(","))
    except UserError as e:
        raise SystemExit(str(e)) from None
    print(search.before_line(), flush=True)
    return (stats if every_layer else stats[args.layer]), search


def validation_trial(model, tokenizer, anchors: transfer.Anchors, cfg: transfer.EditConfig, margin: transfer.MarginFn,
                     before: Sequence[float], edits: Sequence[SparseEdit], *, kl: str | None = "mean",
                     gap: float | None = None, after: bool = True, **info) -> dict:
    """One validation trial of `edits` applied together, in order (each checks the fingerprint of
    the model the earlier ones leave), reverted bit-exactly afterwards. The row, in this order:

    * `info` (the caller's description of the trial: step, neurons, layers, gamma, ...);
    * transfer.score_gains(before, after): ``val_gain_harmful``, ``val_gain_harmless``,
      ``val_gain_source``, ``score``;
    * ``share_of_gap`` = val_gain_harmful / `gap` when `gap` is given (Search.gap);
    * ``after`` ({target, harmless, source} margins with the edits) when `after`;
    * ``first_token_kl`` (mean per language) and, for kl="mean", ``first_token_kl_mean`` over
      every harmless validation anchor (KL_MODES);
    * ``n_neurons`` (|S| summed over the edits), ``fraction_of_parameters`` (summed: the edits
      change disjoint rows), ``seconds`` (the whole trial).
    """
    from mlsafe.evaluate.kl import first_token_kl_per_prompt
    from mlsafe.evaluate.margin import mean_by_lang
    from mlsafe.stack import EditStack

    if kl not in KL_MODES:
        raise ValueError(f"kl must be one of {KL_MODES}, got {kl!r}")
    if not edits:
        raise ValueError("validation_trial needs at least one edit")
    t = time.perf_counter()
    with contextlib.ExitStack() as applied:
        for e in edits:
            applied.enter_context(e.applied(model))
        margins = transfer.validation_margins(model, anchors, cfg, margin)
    gains = transfer.score_gains(before, margins)
    row = {**info, **gains}
    if gap is not None:
        row["share_of_gap"] = gains["val_gain_harmful"] / gap
    if after:
        row["after"] = dict(zip(GROUPS, margins))
    if kl is not None:
        val_harmless = list(anchors.val_harmless)
        per_prompt = first_token_kl_per_prompt(model, tokenizer, val_harmless, EditStack(tuple(edits)))
        row["first_token_kl"] = mean_by_lang(val_harmless, per_prompt)
        if kl == "mean":
            row["first_token_kl_mean"] = float(per_prompt.mean())
    row["n_neurons"] = sum(int(e.neurons.numel()) for e in edits)
    row["fraction_of_parameters"] = sum(e.fraction_of_parameters(model) for e in edits)
    row["seconds"] = time.perf_counter() - t
    return row


def search_trial(search: Search, edits: Sequence[SparseEdit], **kw) -> dict:
    """validation_trial on `search`'s model, split, margin function and margins before."""
    return validation_trial(search.lm.model, search.lm.tokenizer, search.anchors, search.cfg, search.margin,
                            search.before, edits, **kw)


def brief(row: dict, skip: Sequence[str] = ("first_token_kl", "after")) -> str:
    """A row as one json line, floats rounded to 4 places, the per-language blocks left out."""
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k not in skip})


class TrialLog:
    """The trials of one search in one json file: ``{**header, "seconds", "complete", "trials"}``,
    rewritten atomically (mlsafe.results.write_json) after every trial with complete=False and by
    :meth:`finish` with complete=True. ``seconds`` counts from `t0` (default: construction)."""

    def __init__(self, path: str | Path, header: dict, *, t0: float | None = None, echo: bool = True):
        self.path, self.header, self.trials, self.echo = Path(path), dict(header), [], echo
        self.t0 = time.perf_counter() if t0 is None else t0

    def _write(self, complete: bool) -> None:
        write_json(self.path, {**self.header, "seconds": time.perf_counter() - self.t0, "complete": complete,
                               "trials": self.trials})

    def add(self, row: dict) -> dict:
        """Append `row`, rewrite the file (complete=False), print it (brief) when echoing."""
        self.trials.append(row)
        self._write(complete=False)
        if self.echo:
            print(brief(row), flush=True)
        return row

    def finish(self) -> None:
        self._write(complete=True)
