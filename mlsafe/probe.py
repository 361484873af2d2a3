"""Activation capture and streamed float64 statistics (paper Sec. 3.1 and Sec. 4.3).

* :class:`capture` records, at chosen layers, the MLP input x (a forward pre-hook on the
  MLP) and the neuron activations a(x) = up(x) * act(gate(x)) (a forward pre-hook on the
  down projection, whose input is exactly a(x)). Hooks are always removed; with
  ``stop_after_last`` the forward pass is cut after the last needed layer.
* :class:`Moments` streams per-feature count, mean and unbiased variance (the inputs of
  Delta_j, the z-scores of eq. 13 and Cohen's d of eq. 14-15).
* :class:`Gram` streams X^T X and X^T Y (the inputs of Q and X_low^T D_S, Theorem 4.1).
* :func:`collect` and :func:`collect_paired` run a model over prompts in batches and
  fill those accumulators, so memory does not grow with the number of prompts;
  :func:`collect_fused` fills the accumulators of several prompt groups in one pass
  (each text read once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from mlsafe import arch, chat


class _StopForward(Exception):
    """Raised by a hook to end the forward pass early; carries the capture that raised it."""

    def __init__(self, owner: "capture"):
        super().__init__("forward stopped after the last captured layer")
        self.owner = owner


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    return next(iter(kwargs.values()))


class capture:
    """Context manager that captures MLP inputs and/or neuron activations at `layers`.

    After a forward pass inside the context, ``.mlp_inputs[layer]`` is [B, T, d_model]
    and ``.activations[layer]`` is [B, T, d_ff] (detached, from the LAST forward).
    Hooks are removed on exit, also when the forward raises. With
    ``stop_after_last=True`` a hook raises a private exception once the last requested
    layer is recorded; :meth:`forward` catches it (and returns None), and so does the
    ``with`` statement if the model was called directly (the rest of the block is
    skipped, as in ROME's Trace).
    """

    def __init__(self, model: nn.Module, layers: Iterable[int], *, mlp_inputs: bool = True,
                 activations: bool = False, stop_after_last: bool = False):
        self.model = model
        self.layers = sorted(set(int(layer) for layer in layers))
        if not self.layers:
            raise ValueError("capture needs at least one layer index")
        for layer in self.layers:
            arch.mlp(model, layer)  # validates the index
        if not (mlp_inputs or activations):
            raise ValueError("nothing to capture: set mlp_inputs=True and/or activations=True")
        self.want_inputs, self.want_acts = mlp_inputs, activations
        self.stop_after_last = stop_after_last
        self.mlp_inputs: dict[int, torch.Tensor] = {}
        self.activations: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, store: dict, layer: int, stop: bool):
        def hook(module, args, kwargs):
            store[layer] = _first_input(args, kwargs).detach()
            if stop:
                raise _StopForward(self)
        return hook

    def __enter__(self) -> "capture":
        if self._handles:
            raise RuntimeError("this capture is already active; create a new one to nest")
        last = self.layers[-1]
        try:
            for layer in self.layers:
                stop_here = self.stop_after_last and layer == last
                if self.want_inputs:
                    self._handles.append(arch.mlp(self.model, layer).register_forward_pre_hook(
                        self._hook(self.mlp_inputs, layer, stop_here and not self.want_acts),
                        with_kwargs=True))
                if self.want_acts:
                    self._handles.append(arch.down_module(self.model, layer).register_forward_pre_hook(
                        self._hook(self.activations, layer, stop_here), with_kwargs=True))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        return isinstance(exc, _StopForward) and exc.owner is self

    def forward(self, *args, **kwargs):
        """Call the model; returns its output, or None when stopped after the last layer."""
        self.mlp_inputs.clear()
        self.activations.clear()
        try:
            return self.model(*args, **kwargs)
        except _StopForward as stop:
            if stop.owner is not self:
                raise
            return None


POSITIONS = ("last", "mean", "all")


def last_k(position) -> int | None:
    """K of a "lastK" position ("last3" -> 3), else None."""
    if isinstance(position, str) and position.startswith("last") and position[4:].isdigit() and int(position[4:]) > 0:
        return int(position[4:])
    return None


def select_positions(h: torch.Tensor, attention_mask: torch.Tensor | None,
                     position: str | torch.Tensor) -> torch.Tensor:
    """Pick token positions from hidden states h [B, T, d].

    attention_mask [B, T] marks real tokens (1) vs padding (0), left or right padding;
    None means every token is real. It may also be any narrower boolean mask (e.g. only
    prompt tokens): positions outside it are ignored.
    position: "last" -> [B, d], the last kept token of each row;
              "lastK" (e.g. "last5") -> [B * K, d], each row's last K kept tokens, row by row
              (in a chat template these are the same template tokens in every language, so
              rows of parallel prompts pair up position by position);
              "mean" -> [B, d], float64 mean over each row's kept tokens;
              "all"  -> [n_kept, d], every kept token, rows in order;
              a boolean tensor [B, T] -> like "all", restricted to it.
    "last" and "all" return h's values unchanged (same dtype).
    """
    if h.dim() != 3:
        raise ValueError(f"h must be [batch, tokens, features], got shape {tuple(h.shape)}")
    B, T, _ = h.shape
    keep = torch.ones(B, T, dtype=torch.bool, device=h.device) if attention_mask is None \
        else attention_mask.to(h.device).bool()
    if isinstance(position, torch.Tensor):
        keep = keep & position.to(h.device).bool()
        position = "all"
    if keep.shape != (B, T):
        raise ValueError(f"mask shape {tuple(keep.shape)} does not match h's [B, T] = {(B, T)}")
    k = last_k(position)
    if k is None and position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, 'lastK' (K >= 1) or a boolean [B, T] mask, "
                         f"got {position!r}")
    if position == "all":
        return h[keep]
    counts = keep.sum(dim=1)
    if bool((counts < (k or 1)).any()):
        raise ValueError(f"a row has fewer than {k or 1} kept token(s) (padding / masked out); "
                         "drop it, fix the mask or read fewer positions")
    if k is not None:
        rank_from_end = keep.long().flip(1).cumsum(1).flip(1)       # 1 at each row's last kept token
        return h[keep & (rank_from_end <= k)]
    if position == "last":
        idx = (keep.long() * torch.arange(1, T + 1, device=h.device)).argmax(dim=1)
        return h[torch.arange(B, device=h.device), idx]
    weights = keep.to(torch.float64).unsqueeze(-1)
    return (h.to(torch.float64) * weights).sum(dim=1) / counts.to(torch.float64).unsqueeze(-1)


def _as_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_features], got shape {tuple(x.shape)}")
    return x.detach().to(torch.float64)


class Moments:
    """Streamed per-feature count, mean and unbiased variance, in float64.

    Combines batches with Chan et al.'s parallel update, so the result equals the dense
    mean/var of all rows seen (up to float64 rounding) whatever the batching.
    """

    def __init__(self):
        self.n = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = _as_rows(x, "x")
        nb = x.shape[0]
        if nb == 0:
            return
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        if self._mean is None:
            self.n, self._mean, self._m2 = nb, mean_b, m2_b
            return
        if x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"feature count changed: {x.shape[1]} vs {self._mean.shape[0]}")
        n = self.n + nb
        delta = mean_b.to(self._mean.device) - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b.to(self._m2.device) + delta ** 2 * (self.n * nb / n)
        self.n = n

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            raise ValueError("Moments is empty: call update() with at least one row first")
        return self._mean

    @property
    def var(self) -> torch.Tensor:
        """Unbiased (n - 1) variance per feature."""
        if self.n < 2:
            raise ValueError(f"unbiased variance needs at least 2 rows, have {self.n}")
        return self._m2 / (self.n - 1)


class Gram:
    """Streamed float64 X^T X (``xtx``) and, when paired rows Y are given, X^T Y (``xty``);
    with ``with_yty=True`` also Y^T Y (``yty``), so that Gram matrices of any linear mix of
    X and Y (e.g. the gap Y - X) follow without another pass."""

    def __init__(self, with_yty: bool = False):
        self.n = 0
        self.with_yty = with_yty
        self.xtx: torch.Tensor | None = None
        self.xty: torch.Tensor | None = None
        self.yty: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        x = _as_rows(x, "x")
        if self.n and (y is None) != (self.xty is None):
            raise ValueError("pass y in every update or in none (X^T Y needs every paired row)")
        if self.with_yty and y is None:
            raise ValueError("this Gram keeps Y^T Y (with_yty=True): pass y in every update")
        if y is not None:
            y = _as_rows(y, "y").to(x.device)
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"x and y must have the same rows, got {x.shape[0]} and {y.shape[0]}")
        xtx = x.T @ x
        self.xtx = xtx if self.xtx is None else self.xtx + xtx.to(self.xtx.device)
        if y is not None:
            xty = x.T @ y
            self.xty = xty if self.xty is None else self.xty + xty.to(self.xty.device)
        if self.with_yty:
            yty = y.T @ y
            self.yty = yty if self.yty is None else self.yty + yty.to(self.yty.device)
        self.n += x.shape[0]


def encode_batch(tokenizer, texts: Sequence[str], device=None, *, max_length: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """Left-padded model inputs for fully formatted texts (no special tokens added).

    Texts are encoded by :func:`mlsafe.chat.encode_all` (the content of a
    :class:`~mlsafe.chat.ChatText`, e.g. from :func:`mlsafe.transfer.chat_texts`, never becomes
    control tokens; texts over `max_length` have their content truncated from the end).
    Returns input_ids, attention_mask and position_ids (counting real tokens only, so
    absolute-position models such as GPT-2 see the same positions as unpadded).
    """
    return pad_batch(tokenizer, chat.encode_all(tokenizer, texts, max_length=max_length), device)


def pad_batch(tokenizer, ids: Sequence[Sequence[int]], device=None) -> dict[str, torch.Tensor]:
    """:func:`encode_batch` of already encoded id lists."""
    if any(len(row) == 0 for row in ids):
        raise ValueError("a text tokenizes to zero tokens; drop empty texts first")
    out = chat.left_pad(ids, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    out["position_ids"] = (out["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def _encode_for(model, tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Every text encoded once, truncated to the model's context (one warning for all)."""
    return chat.encode_all(tokenizer, texts, max_length=chat.context_limit(model, tokenizer), what="text")


PositionMaskFn = Callable[[Sequence[str], dict], torch.Tensor]
WHAT = ("activations", "mlp_inputs")


@contextmanager
def _inference(model: nn.Module):
    """No grad and eval mode for the duration; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batches(model, tokenizer, texts, layers, *, acts, inputs, batch_size, device, progress,
             position_mask_fn):
    """Yield (capture, keep mask [B, T]) per batch; call inside :func:`_inference`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device if device is not None else next(model.parameters()).device
    ids = _encode_for(model, tokenizer, texts)
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="collect", unit="batch")
    for start in starts:
        chunk = list(texts[start:start + batch_size])
        enc = pad_batch(tokenizer, ids[start:start + batch_size], device)
        keep = enc["attention_mask"].bool()
        if position_mask_fn is not None:
            keep = keep & position_mask_fn(chunk, enc).to(device).bool()
        with capture(model, layers, mlp_inputs=inputs, activations=acts, stop_after_last=True) as cap:
            cap.forward(**enc, use_cache=False)
        yield cap, keep


def collect(model: nn.Module, tokenizer, texts: Sequence[str], layers: Iterable[int], *,
            position: str = "last", what: Sequence[str] = ("activations",), batch_size: int = 16,
            device=None, progress: bool = False,
            position_mask_fn: PositionMaskFn | None = None) -> dict[int, dict[str, Moments | Gram]]:
    """Stream statistics of `texts` (chat template already applied) at `layers`.

    Returns ``{layer: {"activations": Moments, "mlp_inputs": Gram}}`` with one entry per
    requested `what`: Moments of the neuron activations a(x) (for Delta_j, eq. 13-15)
    and the Gram X^T X of the MLP inputs (for Q, Theorem 4.1), one row per prompt for
    position "last"/"mean", one per token for "all" (see :func:`select_positions`).
    position_mask_fn(texts, encoding) -> bool [B, T] narrows the tokens read (e.g. prompt
    tokens only); it is combined with the attention mask. Batches are left-padded,
    run without grad and cut after the last layer; the model's train/eval mode is restored.
    """
    what = tuple(what)
    if not what or any(w not in WHAT for w in what):
        raise ValueError(f"what must be a non-empty subset of {WHAT}, got {what!r}")
    layers = sorted(set(int(layer) for layer in layers))
    out = {layer: {w: Moments() if w == "activations" else Gram() for w in what} for layer in layers}
    batches = _batches(model, tokenizer, texts, layers, acts="activations" in what,
                       inputs="mlp_inputs" in what, batch_size=batch_size, device=device,
                       progress=progress, position_mask_fn=position_mask_fn)
    with _inference(model):
        for cap, keep in batches:
            for layer in layers:
                for w in what:
                    h = cap.activations[layer] if w == "activations" else cap.mlp_inputs[layer]
                    out[layer][w].update(select_positions(h, keep, position))
    return out


def collect_paired(model: nn.Module, tokenizer, texts_a: Sequence[str], texts_b: Sequence[str],
                   layers: Iterable[int], *, position: str = "last", batch_size: int = 16, device=None,
                   progress: bool = False, position_mask_fn: PositionMaskFn | None = None) -> dict[int, Gram]:
    """Cross-Gram of parallel prompts per layer: X_a^T X_a (``xtx``) and X_a^T X_b (``xty``).

    Row i of X_a / X_b is the MLP input of texts_a[i] / texts_b[i] at `position`
    ("last" or "mean": one row per prompt). With texts_a the harmful target-language
    prompts and texts_b their English originals, xtx = X_low^T X_low and
    xty = X_low^T X_en, so X_low^T D_S = (xty - xtx) W_S (Sec. 4.3, Theorem 4.1).
    One pass over both lists serves every layer.
    """
    if len(texts_a) != len(texts_b):
        raise ValueError(f"texts_a and texts_b must be parallel lists, got {len(texts_a)} and {len(texts_b)}")
    if position not in ("last", "mean") and last_k(position) is None:
        raise ValueError(f"paired rows need the same rows for every prompt: position 'last', 'lastK' or "
                         f"'mean', got {position!r}")
    layers = sorted(set(int(layer) for layer in layers))
    kw = dict(acts=False, inputs=True, batch_size=batch_size, device=device,
              position_mask_fn=position_mask_fn)
    grams = {layer: Gram() for layer in layers}
    with _inference(model):
        for (cap_a, keep_a), (cap_b, keep_b) in zip(
                _batches(model, tokenizer, texts_a, layers, progress=progress, **kw),
                _batches(model, tokenizer, texts_b, layers, progress=False, **kw)):
            for layer in layers:
                grams[layer].update(select_positions(cap_a.mlp_inputs[layer], keep_a, position),
                                    select_positions(cap_b.mlp_inputs[layer], keep_b, position))
    return grams


def _units(n_texts: int, pairs: dict[str, Sequence[tuple[int, int]]]) -> list[list[int]]:
    """Text indices grouped so that both texts of every pair lie in one group (connected
    components of the pair graph, e.g. an English prompt with all its translations), then
    every other text alone; groups and their members in order of first appearance."""
    parent = list(range(n_texts))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order: list[int] = []
    for plist in pairs.values():
        for a, b in plist:
            order += [int(b), int(a)]
            ra, rb = root(int(a)), root(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    seen: set[int] = set()
    for i in order + list(range(n_texts)):
        if i not in seen:
            seen.add(i)
            groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _opening(model, rows: Sequence[Sequence[int]], layers: Sequence[int], device
             ) -> tuple[object | None, dict[int, torch.Tensor]]:
    """The rows' shared opening (mlsafe.evaluate.prefix.SharedPrefix) and its MLP inputs at
    each layer [p, d_model]; (None, {}) without one."""
    from mlsafe.evaluate.prefix import SharedPrefix, shared_prefix_len

    n = shared_prefix_len(rows)
    if not n:
        return None, {}
    with capture(model, layers) as cap:
        prefix = SharedPrefix.compute(model, rows[0][:n], device)
    return prefix, {k: v[0] for k, v in cap.mlp_inputs.items()}


def _captured(model, tokenizer, prefix, rows: Sequence[Sequence[int]], layers: Sequence[int], device,
              need_inputs: bool, need_acts: bool) -> tuple[int, torch.Tensor, "capture"]:
    """One batch's forward up to the last of `layers`: (tokens of the shared opening not run
    here, the kept-token mask [B, T - skip] over the captured positions, the capture)."""
    from mlsafe.evaluate.prefix import batch_inputs, positions, sliding_window

    skip = 0
    if prefix is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        enc, skip, cache = batch_inputs(prefix, rows, pad_id=pad, device=device, window=sliding_window(model))
    if not skip:
        enc = pad_batch(tokenizer, rows, device)
    with capture(model, layers, mlp_inputs=need_inputs, activations=need_acts, stop_after_last=True) as cap:
        if skip:
            mask = enc["attention_mask"]
            cap.forward(input_ids=enc["input_ids"][:, skip:], attention_mask=mask,
                        position_ids=positions(mask)[:, skip:], use_cache=True, **{prefix.kwarg: cache})
        else:
            cap.forward(**enc, use_cache=False)
    return skip, enc["attention_mask"][:, skip:].bool(), cap


def collect_fused(model: nn.Module, tokenizer, texts: Sequence[str], layers: Iterable[int], *,
                  position: str = "last", moments: dict[str, Sequence[int]] | None = None,
                  grams: dict[str, Sequence[int]] | None = None,
                  pairs: dict[str, Sequence[tuple[int, int]]] | None = None, with_yty: Sequence[str] = (),
                  batch_size: int = 16, device=None, progress: bool = False,
                  share_prefix: bool = True) -> dict[int, dict]:
    """Every statistic of several prompt groups in ONE forward pass over `texts` (each text read once).

    Groups index into `texts` (chat template applied):
      moments[name] = [i, ...]: Moments of the neuron activations a(x) at `position`
                      (as ``collect(..., what=("activations",))``);
      grams[name]   = [i, ...]: Gram X^T X of the MLP inputs at EVERY kept token
                      (as ``collect(..., position="all", what=("mlp_inputs",))``);
      pairs[name]   = [(a, b), ...]: cross-Gram of MLP inputs at `position`, x = row of text a,
                      y = row of text b (as ``collect_paired``); names in `with_yty` also keep Y^T Y.
    A text may sit in several groups (e.g. an English prompt in the neuron moments and as
    the source side of its translations' pairs). Batches keep each pair's texts together
    (`_units`; a group bigger than `batch_size` is one batch of its own), units of similar
    length together, so memory is bounded by the batch, not the number of texts; results
    equal the separate collectors' up to float64 round-off (and the model's own
    batch-padding round-off). With `share_prefix` and position "last", the texts' common
    opening (the chat template's; mlsafe.evaluate.prefix) is run once: each batch feeds
    only the rest of its rows after the opening's keys and values, and the Gram groups
    count the opening's rows once per member text, as if each had read it. Returns
    ``{layer: {name: Moments | Gram}}``.
    """
    moments, grams, pairs = dict(moments or {}), dict(grams or {}), dict(pairs or {})
    names = [*moments, *grams, *pairs]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"give at least one group, with unique names across moments/grams/pairs; got {names}")
    if pairs and position not in ("last", "mean") and last_k(position) is None:
        raise ValueError(f"paired rows need the same rows for every prompt: position 'last', 'lastK' or "
                         f"'mean', got {position!r}")
    n = len(texts)
    for name, idx in [*moments.items(), *grams.items(), *((k, [i for ab in v for i in ab])
                                                          for k, v in pairs.items())]:
        if any(not 0 <= int(i) < n for i in idx):
            raise ValueError(f"group {name!r} indexes outside texts (0..{n - 1})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = sorted(set(int(layer) for layer in layers))
    out = {layer: {**{k: Moments() for k in moments}, **{k: Gram() for k in grams},
                   **{k: Gram(with_yty=k in with_yty) for k in pairs}} for layer in layers}
    mom_sets = {k: set(int(i) for i in idx) for k, idx in moments.items()}
    gram_sets = {k: set(int(i) for i in idx) for k, idx in grams.items()}
    used = set().union(*mom_sets.values(), *gram_sets.values(), *({i for ab in v for i in ab} for v in pairs.values()))
    ids = _encode_for(model, tokenizer, texts)
    # units of similar length share batches (less padding)
    units = sorted((u for u in _units(n, pairs) if u[0] in used), key=lambda u: max(len(ids[i]) for i in u))
    batches, cur = [], []
    for unit in units:
        if cur and len(cur) + len(unit) > batch_size:
            batches.append(cur)
            cur = []
        cur = cur + unit
    if cur:
        batches.append(cur)
    pair_index = {k: {} for k in pairs}      # pair group -> b -> [a, ...] in given order
    for k, plist in pairs.items():
        for a, b in plist:
            pair_index[k].setdefault(int(b), []).append(int(a))
    need_acts, need_inputs = bool(moments), bool(grams or pairs)
    dev = device if device is not None else next(model.parameters()).device
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="collect", unit="batch")
    with _inference(model):
        prefix, opening = (_opening(model, [ids[i] for i in sorted(used)], layers, dev)
                           if share_prefix and position == "last" else (None, {}))
        for batch in batches:
            skip, keep, cap = _captured(model, tokenizer, prefix, [ids[i] for i in batch], layers, dev,
                                             need_inputs, need_acts)
            row_of = {i: r for r, i in enumerate(batch)}
            for layer in layers:
                acc = out[layer]
                for k, members in mom_sets.items():
                    rows = [r for r, i in enumerate(batch) if i in members]
                    if rows:
                        acc[k].update(select_positions(cap.activations[layer][rows], keep[rows], position))
                for k, members in gram_sets.items():
                    rows = [r for r, i in enumerate(batch) if i in members]
                    if rows:
                        x = select_positions(cap.mlp_inputs[layer][rows], keep[rows], "all")
                        if skip:   # every row's opening, computed once
                            x = torch.cat([opening[layer].repeat(len(rows), 1), x])
                        acc[k].update(x)
                for k, by_b in pair_index.items():
                    ra = [row_of[a] for b in batch if b in by_b for a in by_b[b]]
                    rb = [row_of[b] for b in batch if b in by_b for _ in by_b[b]]
                    if ra:
                        h = cap.mlp_inputs[layer]
                        acc[k].update(select_positions(h[ra], keep[ra], position),
                                      select_positions(h[rb], keep[rb], position))
    return out
