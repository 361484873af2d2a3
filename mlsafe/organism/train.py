"""Two-stage training of the organism, planted safety neurons, and the on-disk cache.

Model: a tiny `LlamaForCausalLM` (ReLU gated MLP, so neuron activations are sparse).
Stage 1 trains everything except a reserved set S of MLP neurons at one middle layer,
which stay exactly zero (rows S of gate_proj/up_proj, columns S of down_proj).
Stage 2 (safety alignment) has two variants:
  "sparse": only the neurons S are trained (rows S of gate/up, columns S of down), as
            SN-Tune aligns real models: the refusal mechanism is planted in S, and the
            question for the method becomes whether it finds S and transfers it;
  "dense":  every parameter is trained (refusal spread over the network).
S is exposed in the saved config (`config.mlsafe_planted`) and in `planted_neurons.json`.

Cache: `$MLSAFE_CACHE` or ~/.cache/mlsafe, one folder per (variant, seed, key), where
key hashes the corpus recipe, model config, training hyper-parameters and CODE_VERSION;
stage 1 is cached too, shared by both variants and by every stage-2 setting (its key reads
only the stage-1 fields of the recipe and of TrainSpec). Folders are written atomically
(trained into a temporary folder, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mlsafe.organism.corpus import Corpus, Recipe, build_corpus
from mlsafe.organism.tokenizer import build_tokenizer, chat_ids, response_ids
from mlsafe.results import publish_folder

CODE_VERSION = "organism-3"
VARIANTS = ("sparse", "dense")


@dataclass(frozen=True)
class ModelSpec:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    d_ff: int = 512
    max_len: int = 64
    planted_layer: int = 2
    n_planted: int = 32


@dataclass(frozen=True)
class TrainSpec:
    batch: int = 32
    stage1_steps: int = 1500
    stage1_lr: float = 3e-3
    stage2_steps: int = 400
    stage2_lr_sparse: float = 1e-2
    stage2_lr_dense: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01


def default_cache_dir() -> Path:
    return Path(os.environ.get("MLSAFE_CACHE") or Path.home() / ".cache" / "mlsafe")


STAGE2_FIELDS = ("stage2_steps", "stage2_lr_sparse", "stage2_lr_dense")


def cache_key(seed: int, recipe: Recipe, mspec: ModelSpec, tspec: TrainSpec, variant: str | None) -> str:
    """sha256 over everything that determines the trained weights (variant None = stage 1 only:
    the recipe's stage-1 fields and TrainSpec without STAGE2_FIELDS, so a stage-2 change reuses
    the cached stage 1)."""
    train = asdict(tspec)
    recipe_json = recipe.to_json()
    if variant is None:
        train = {k: v for k, v in train.items() if k not in STAGE2_FIELDS}
        recipe_json = recipe.stage1_json()
    payload = json.dumps({"seed": seed, "recipe": recipe_json, "model": asdict(mspec), "train": train,
                          "code": CODE_VERSION, "sources": _source_hash(), "variant": variant}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _source_hash() -> str:
    """Hash of the files that generate the corpus, so an edited lexicon retrains (recipe.py's
    numbers enter through the recipe's JSON instead)."""
    here = Path(__file__).parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in ("lexicon.py", "corpus.py", "tokenizer.py"))
                          ).hexdigest()[:16]


def planted_neurons(seed: int, mspec: ModelSpec) -> list[int]:
    """The reserved neuron indices S at `mspec.planted_layer` (deterministic from the seed)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return sorted(torch.randperm(mspec.d_ff, generator=g)[: mspec.n_planted].tolist())


def make_config(tokenizer: PreTrainedTokenizerFast, mspec: ModelSpec, planted: dict | None = None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=mspec.hidden, intermediate_size=mspec.d_ff,
        num_hidden_layers=mspec.layers, num_attention_heads=mspec.heads, num_key_value_heads=mspec.heads,
        max_position_embeddings=mspec.max_len, hidden_act="relu", tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, mlsafe_planted=planted,
    )


# --- data --------------------------------------------------------------------------------

def encode_stage1(corpus: Corpus, tok) -> list[tuple[list[int], int]]:
    """(ids, first loss position): stage 1 is language modelling on whole sequences."""
    out = [(chat_ids(tok, p.text) + response_ids(tok, p.response), 1) for p in corpus.stage1]
    out += [([tok.bos_token_id] + tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], 1)
            for s in corpus.plain]
    return out


def encode_stage2(corpus: Corpus, tok) -> list[tuple[list[int], int]]:
    """(ids, first loss position): stage 2 trains on the response tokens only."""
    out = []
    for p in corpus.stage2:
        prompt = chat_ids(tok, p.text)
        out.append((prompt + response_ids(tok, p.response), len(prompt)))
    return out


def _batches(data, batch: int, steps: int, max_len: int, pad: int, gen: torch.Generator):
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch:
            order += torch.randperm(len(data), generator=gen).tolist()
        idx, order = order[:batch], order[batch:]
        seqs = [data[i] for i in idx]
        n = min(max_len, max(len(s) for s, _ in seqs))
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        labels = torch.full((len(seqs), n), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for r, (s, start) in enumerate(seqs):
            s = s[:n]
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
            labels[r, start: len(s)] = torch.tensor(s[start:])
        yield ids, mask, labels


# --- training -------------------------------------------------------------------------------

def _mlp(model, layer: int):
    return model.model.layers[layer].mlp


def _set_planted(model, layer: int, neurons: list[int], gen: torch.Generator | None) -> None:
    """Zero the neurons S (gen None), or give their gate/up rows a fresh small init (down stays 0)."""
    mlp = _mlp(model, layer)
    with torch.no_grad():
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            if gen is None:
                w[neurons] = 0.0
            else:
                w[neurons] = torch.randn(len(neurons), w.shape[1], generator=gen) * model.config.initializer_range
        mlp.down_proj.weight[:, neurons] = 0.0


def _run(model, data, params, lr: float, steps: int, tspec: TrainSpec, gen, pad: int, desc: str,
         progress: bool, after_step=None, weight_decay: float = 0.0) -> list[float]:
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / tspec.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    losses = []
    bar = tqdm(_batches(data, tspec.batch, steps, model.config.max_position_embeddings, pad, gen),
               total=steps, desc=desc, disable=not progress, mininterval=2.0)
    for ids, mask, labels in bar:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if after_step:
            after_step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    model.eval()
    return losses


def train_stage1(corpus: Corpus, tok, mspec: ModelSpec, tspec: TrainSpec, progress: bool = True):
    seed = corpus.seed
    torch.manual_seed(seed)
    neurons = planted_neurons(seed, mspec)
    model = LlamaForCausalLM(make_config(tok, mspec))
    _set_planted(model, mspec.planted_layer, neurons, None)
    gen = torch.Generator().manual_seed(seed)
    losses = _run(model, encode_stage1(corpus, tok), list(model.parameters()), tspec.stage1_lr, tspec.stage1_steps,
                  tspec, gen, tok.pad_token_id, "stage 1", progress,
                  after_step=lambda: _set_planted(model, mspec.planted_layer, neurons, None),
                  weight_decay=tspec.weight_decay)
    return model, losses


def train_stage2(model, corpus: Corpus, tok, mspec: ModelSpec, tspec: TrainSpec, variant: str, progress: bool = True):
    """Safety alignment (in place). sparse: only neurons S learn; dense: everything learns."""
    seed = corpus.seed
    layer, neurons = mspec.planted_layer, planted_neurons(seed, mspec)
    _set_planted(model, layer, neurons, torch.Generator().manual_seed(20_000 + seed))
    gen = torch.Generator().manual_seed(30_000 + seed)
    if variant == "sparse":
        mlp = _mlp(model, layer)
        keep_rows = torch.zeros(mspec.d_ff, 1)
        keep_rows[neurons] = 1.0
        params = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        hooks = [mlp.gate_proj.weight.register_hook(lambda g: g * keep_rows),
                 mlp.up_proj.weight.register_hook(lambda g: g * keep_rows),
                 mlp.down_proj.weight.register_hook(lambda g: g * keep_rows.T)]
        lr = tspec.stage2_lr_sparse
    else:
        params, hooks, lr = list(model.parameters()), [], tspec.stage2_lr_dense
    losses = _run(model, encode_stage2(corpus, tok), params, lr, tspec.stage2_steps, tspec, gen,
                  tok.pad_token_id, f"stage 2 ({variant})", progress)
    for h in hooks:
        h.remove()
    for p in model.parameters():
        p.requires_grad_(True)
    model.config.mlsafe_planted = {"variant": variant, "layer": layer, "neurons": neurons,
                                   "trained": "gate/up rows and down columns of these neurons only"
                                   if variant == "sparse" else "all parameters (dense alignment)"}
    return model, losses


# --- cache ------------------------------------------------------------------------------------

def _save_atomic(folder: Path, model, tok, extra: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for name, obj in extra.items():
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        publish_folder(tmp, folder)   # another process finished first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(folder: Path):
    model = LlamaForCausalLM.from_pretrained(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    model.eval()
    return model, tok


def organism_dir(seed: int = 0, variant: str = "sparse", cache_dir: str | Path | None = None,
                 recipe: Recipe | None = None, mspec: ModelSpec | None = None, tspec: TrainSpec | None = None) -> Path:
    """Where `load_or_train` keeps (or will keep) this organism."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")
    recipe, mspec, tspec = recipe or Recipe(), mspec or ModelSpec(), tspec or TrainSpec()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "organism" / f"{variant}-seed{seed}-{cache_key(seed, recipe, mspec, tspec, variant)}"


def load_or_train_stage1(seed: int = 0, cache_dir: str | Path | None = None, progress: bool = True,
                         recipe: Recipe | None = None, mspec: ModelSpec | None = None, tspec: TrainSpec | None = None,
                         corpus: Corpus | None = None):
    """The stage-1 model (shared by both variants): (model, tokenizer, training info), cached."""
    recipe, mspec, tspec = recipe or Recipe(), mspec or ModelSpec(), tspec or TrainSpec()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    s1 = root / "organism" / f"stage1-seed{seed}-{cache_key(seed, recipe, mspec, tspec, None)}"
    if (s1 / "config.json").exists():
        model, tok = _load(s1)
        return model, tok, json.loads((s1 / "training.json").read_text())
    torch.set_num_threads(1)
    corpus = corpus or build_corpus(seed, recipe)
    tok = build_tokenizer()
    t0 = time.time()
    model, losses = train_stage1(corpus, tok, mspec, tspec, progress)
    info = {"stage1_seconds": time.time() - t0, "stage1_final_loss": sum(losses[-50:]) / 50}
    _save_atomic(s1, model, tok, {"training.json": info})
    return model, tok, info


def load_or_train(seed: int = 0, variant: str = "sparse", cache_dir: str | Path | None = None, progress: bool = True,
                  recipe: Recipe | None = None, mspec: ModelSpec | None = None, tspec: TrainSpec | None = None):
    """The organism (eval mode, CPU) and its tokenizer: loaded from the cache, else trained and cached."""
    recipe, mspec, tspec = recipe or Recipe(), mspec or ModelSpec(), tspec or TrainSpec()
    final = organism_dir(seed, variant, cache_dir, recipe, mspec, tspec)
    if (final / "config.json").exists():
        return _load(final)
    torch.set_num_threads(1)
    corpus = build_corpus(seed, recipe)
    model, tok, info1 = load_or_train_stage1(seed, cache_dir, progress, recipe, mspec, tspec, corpus)
    t1 = time.time()
    model, losses = train_stage2(model, corpus, tok, mspec, tspec, variant, progress)
    info = dict(info1, stage2_seconds=time.time() - t1, stage2_final_loss=sum(losses[-50:]) / 50,
                seed=seed, variant=variant, code_version=CODE_VERSION)
    _save_atomic(final, model, tok, {"training.json": info, "planted_neurons.json": model.config.mlsafe_planted})
    return _load(final)
