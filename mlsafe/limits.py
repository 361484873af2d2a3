"""Tables for "where the edit works and where it stops": the patching ceiling and the lead search.

Reads the records `mlsafe ceiling` (ceiling.json) and scripts/edit_search.py (search.json)
write; the book's chapter plots these frames and quotes their numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

SITE_ORDER = ("neurons", "mlp", "residual")


def ceiling_frame(record: Mapping) -> pd.DataFrame:
    """Share of the English-target margin gap closed by patching one layer: index (lang, layer),
    one column per site, plus |S| of the layer."""
    rows = pd.DataFrame(record["rows"])
    wide = rows.pivot_table(index=["lang", "layer"], columns="site", values="share_of_gap")
    wide = wide[[s for s in SITE_ORDER if s in wide.columns]]
    wide["n_neurons"] = rows.groupby(["lang", "layer"])["n_neurons"].first()
    return wide


def ceiling_peaks(record: Mapping) -> pd.DataFrame:
    """Per language and site: the best layer and the share it closes (index lang, columns
    <site>_layer and <site>_share)."""
    rows = pd.DataFrame(record["rows"])
    out = {}
    for (lang, site), group in rows.groupby(["lang", "site"]):
        best = group.loc[group["share_of_gap"].idxmax()]
        out.setdefault(lang, {})[f"{site}_layer"] = int(best["layer"])
        out[lang][f"{site}_share"] = float(best["share_of_gap"])
    return pd.DataFrame.from_dict(out, orient="index").sort_index()


def plot_ceiling(record: Mapping, title: str | None = None):
    """One panel per language: the share of the gap closed per layer for each site (the
    residual solid, the MLP dashed, the safety neurons S dotted). Returns the Figure."""
    import matplotlib.pyplot as plt

    frame = ceiling_frame(record)
    langs = sorted(frame.index.get_level_values("lang").unique())
    fig, axes = plt.subplots(1, len(langs), figsize=(3.8 * len(langs), 3.0), squeeze=False, sharey=True)
    for ax, lang in zip(axes[0], langs):
        sub = frame.loc[lang]
        for site, style in (("residual", "-"), ("mlp", "--"), ("neurons", ":")):
            if site in sub and sub[site].notna().any():
                ax.plot(sub.index, sub[site], style, marker="o", ms=3,
                        label={"neurons": "safety neurons S"}.get(site, site))
        ax.axhline(0, color="grey", lw=0.5)
        ax.axhline(1, color="grey", lw=0.5, ls=":")
        ax.set_title(lang)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("share of the gap closed")
    axes[0][0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def search_frame(record: Mapping) -> pd.DataFrame:
    """Every trial of the search: step, neurons, layer(s), the varied factor, validation gains,
    score, |S|, share of parameters and mean first-token KL on harmless validation anchors."""
    rows = []
    for t in record["trials"]:
        layer = t.get("layer", t.get("layers"))
        kl = t.get("first_token_kl")
        factor = {k: t[k] for k in ("k", "rank", "gamma", "lam", "modules") if k in t}
        rows.append({"step": t["step"], "neurons": str(t.get("neurons", "paper")),
                     "layer": str(layer), "factor": ", ".join(f"{k}={v}" for k, v in factor.items()),
                     "gain_target": t["val_gain_harmful"], "gain_harmless": t["val_gain_harmless"],
                     "gain_english": t["val_gain_source"], "score": t["score"], "n_neurons": t["n_neurons"],
                     "params_pct": 100 * t["fraction_of_parameters"],
                     "kl": sum(kl.values()) / len(kl) if kl else float("nan"),
                     "predicted_gap_closed": t.get("predicted_gap_closed", float("nan"))})
    return pd.DataFrame(rows)


def share_of_target_gap(record: Mapping, gain: float) -> float:
    """A validation margin gain as a share of the validation gap (English margin - target margin)."""
    before = record["before"]
    gap = before["source"] - before["target"]
    return gain / gap if gap > 0 else float("nan")


def best_trial(frame: pd.DataFrame, step: str | None = None) -> pd.Series:
    """The highest-scoring trial (of one step, when given)."""
    f = frame if step is None else frame[frame["step"] == step]
    if f.empty:
        raise ValueError(f"no trial of step {step!r}")
    return f.loc[f["score"].idxmax()]
