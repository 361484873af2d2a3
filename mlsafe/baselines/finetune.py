"""The training baseline: LoRA supervised fine-tuning on translated refusals (stand-in for MPO).

Data (`sft_examples`): target-language harmful anchors paired with a refusal (the anchor's
own `response` when it has one, as the organism's anchors do, else the English parallel
anchor's response, else `DEFAULT_REFUSAL`), plus every harmless anchor with its reference
response so the model keeps its utility. Only response tokens carry loss.

Adapter (`LoRATrainer`): LoRA (Hu et al. 2021) through `peft` on the MLP projections
(`SFTConfig.modules`) of `SFTConfig.layers` (default every layer): y = x W^T + (alpha / r)
x A^T B^T with A [r, in] drawn from a seeded normal (std 1 / sqrt(in)), B [out, r] zero, so
training starts at the base model. The base weights are frozen and never touched: each
`train` call wraps the model with ``peft.get_peft_model`` and unloads the adapter without
merging (``unload()``) afterwards. `delta()` gives the adapters as dense weight deltas
(`WeightDelta`, dW = (alpha / r) B A) that apply and revert exactly. Initialisation,
batch order and Adam are seeded: same seed, same weights (on one CPU thread).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mlsafe import arch, transfer
from mlsafe.backends import LoadedModel, policy
from mlsafe.prompts import Prompt

DEFAULT_REFUSAL = "I'm sorry, but I cannot help with that."


@dataclass(frozen=True)
class SFTConfig:
    """LoRA fine-tuning settings (defaults suit the organism; real models want a smaller lr)."""

    rank: int = 8
    alpha: float = 16.0
    lr: float = 3e-3
    steps: int = 150
    batch_size: int = 16
    modules: tuple[str, ...] = ("gate", "up", "down")
    layers: tuple[int, ...] | None = None     # None: every layer
    max_len: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.rank < 1 or self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need rank >= 1, steps >= 0, batch_size >= 1, lr > 0; got {self}")
        if not self.modules or not set(self.modules) <= {"gate", "up", "down"}:
            raise ValueError(f"modules must be a non-empty subset of gate/up/down, got {self.modules}")


def default_sft(lm: LoadedModel, seed: int = 0) -> SFTConfig:
    """SFTConfig for a loaded model: the learning rate of its backend's run policy
    (mlsafe.backends.policy, key "sft_lr")."""
    return SFTConfig(seed=seed, lr=policy(lm)["sft_lr"])


@dataclass(frozen=True)
class Example:
    ids: list[int]
    loss_from: int      # first position whose token carries loss (the response)


def _refusal_for(p: Prompt, english: dict[str, Prompt]) -> str:
    if p.response is not None:
        return p.response
    src = english.get(p.parallel_id)
    return src.response if src is not None and src.response is not None else DEFAULT_REFUSAL


def sft_examples(tokenizer, harmful: Sequence[Prompt], harmless: Sequence[Prompt], targets: Sequence[str], *,
                 source: str = "en", max_len: int = 256) -> list[Example]:
    """Token ids and loss start of each training conversation (module docstring)."""
    english = {p.parallel_id: p for p in harmful if p.lang == source}
    convs = [Prompt(p.id, p.lang, p.text, True, p.parallel_id, response=_refusal_for(p, english))
             for p in harmful if p.lang in targets]
    convs += [p for p in harmless if p.response is not None]
    if not any(p.harmful for p in convs):
        raise ValueError(f"no harmful anchors in the targets {list(targets)} to train refusals on")
    out = []
    for prompt_text, full_text in zip(transfer.chat_texts(tokenizer, convs),
                                      transfer.chat_texts(tokenizer, convs, with_response=True)):
        pre = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full = tokenizer(full_text, add_special_tokens=False)["input_ids"][:max_len]
        start = next((i for i, (a, b) in enumerate(zip(pre, full)) if a != b), min(len(pre), len(full)))
        if start < len(full):
            out.append(Example(full, start))
    return out


class WeightDelta:
    """Dense additive deltas of named parameters; `applied(model)` adds them and restores exactly."""

    def __init__(self, deltas: dict[str, torch.Tensor]):
        self.deltas = deltas

    def fraction_of_parameters(self, model: nn.Module) -> float:
        """Changed entries over all unique parameters (the edit's definition)."""
        return sum(d.numel() for d in self.deltas.values()) / sum(p.numel() for p in model.parameters())

    @contextmanager
    def applied(self, model: nn.Module):
        params = dict(model.named_parameters())
        missing = sorted(set(self.deltas) - set(params))
        if missing:
            raise ValueError(f"the model has no parameters {missing[:3]}; apply the delta to the model it was "
                             "trained on")
        saved = []
        try:
            with torch.no_grad():
                for name, d in self.deltas.items():
                    p = params[name]
                    saved.append((p, p.clone()))
                    p.add_(d.to(p.device, p.dtype))
            yield model
        finally:
            with torch.no_grad():
                for p, original in reversed(saved):
                    p.copy_(original)


def _linear_of(model: nn.Module, layer: int, which: str) -> tuple[str, nn.Module]:
    """(module path, nn.Linear) of projection `which` of `layer`; refuses fused / Conv1D MLPs."""
    spec = arch.get_arch(model)
    if spec.fused or spec.conv1d or (which == "gate" and spec.gate is None):
        raise ValueError(f"the LoRA baseline supports separate gate/up/down nn.Linear projections, not "
                         f"{spec.model_type}")
    name = {"gate": spec.gate, "up": spec.up, "down": spec.down}[which]
    mlp = arch.mlp(model, layer)
    prefix = next(n for n, m in model.named_modules() if m is mlp)
    return f"{prefix}.{name}", getattr(mlp, name)


class LoRATrainer:
    """Seeded LoRA training with `peft` that can be continued (`train(steps)` is cumulative).

    The trainer owns the adapter parameters (A [r, in], B [out, r] per projection, float32)
    and one Adam over them. Each `train` call wraps the model with ``peft.get_peft_model``
    (LoraConfig on `cfg.modules` of `cfg.layers`, dropout 0), puts the trainer's parameters
    into the LoRA layers, trains, and unloads the adapter without merging, so between calls
    the model is exactly the base model.
    """

    ADAPTER = "default"

    def __init__(self, model: nn.Module, examples: Sequence[Example], cfg: SFTConfig, *, pad_id: int = 0):
        if not examples:
            raise ValueError("no training examples")
        self.model, self.examples, self.cfg, self.pad_id = model, list(examples), cfg, pad_id
        spec = arch.get_arch(model)
        self.layers = list(cfg.layers) if cfg.layers is not None else list(range(arch.n_layers(model)))
        gen = torch.Generator().manual_seed(cfg.seed)
        dev = next(model.parameters()).device
        self.adapters: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}   # module path -> (A, B)
        for layer in self.layers:
            for which in cfg.modules:
                path, lin = _linear_of(model, layer, which)
                a = torch.randn(cfg.rank, lin.in_features, generator=gen, dtype=torch.float32) / lin.in_features ** 0.5
                b = torch.zeros(lin.out_features, cfg.rank)
                self.adapters[path] = (nn.Parameter(a.to(dev)), nn.Parameter(b.to(dev)))
        self.scale = cfg.alpha / cfg.rank
        self.lora_config = dict(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, bias="none",
                                target_modules=sorted({getattr(spec, w) for w in cfg.modules}),
                                layers_to_transform=self.layers, layers_pattern=spec.blocks.rsplit(".", 1)[-1])
        self.opt = torch.optim.Adam([p for ab in self.adapters.values() for p in ab], lr=cfg.lr)
        self.gen = gen
        self.steps_done, self.seconds, self.tokens = 0, 0.0, 0
        self.losses: list[float] = []

    @contextmanager
    def adapted(self):
        """The model wrapped by peft with the trainer's current adapters (a PeftModel); on exit
        the adapter is unloaded without merging and the parameters' requires_grad and the
        model's train/eval mode are restored: the base model is bit-exact what it was."""
        from peft import LoraConfig, get_peft_model

        frozen = [(p, p.requires_grad) for p in self.model.parameters()]
        was_training = self.model.training
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft's own initialisation (replaced below) draws from the global generator; peft 0.21
            # reads transformers' deprecated is_gradient_checkpointing (a FutureWarning, not ours)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            peft_model = get_peft_model(self.model, LoraConfig(**self.lora_config), adapter_name=self.ADAPTER)
        try:
            found = {name: m for name, m in self.model.named_modules() if hasattr(m, "lora_A")}
            if set(found) != set(self.adapters):
                raise RuntimeError(f"peft adapted {sorted(set(found) ^ set(self.adapters))[:3]} differently from "
                                   "the trainer's projections")
            for path, (a, b) in self.adapters.items():
                found[path].lora_A[self.ADAPTER].weight = a
                found[path].lora_B[self.ADAPTER].weight = b
            yield peft_model
        finally:
            peft_model.unload()
            for p, flag in frozen:
                p.requires_grad_(flag)
            self.model.train(was_training)

    def _batch(self) -> tuple[dict, torch.Tensor]:
        idx = torch.randint(len(self.examples), (self.cfg.batch_size,), generator=self.gen).tolist()
        rows = [self.examples[i] for i in idx]
        T = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        labels = torch.full((len(rows), T), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r.ids)] = torch.tensor(r.ids)
            mask[i, :len(r.ids)] = 1
            labels[i, r.loss_from:len(r.ids)] = torch.tensor(r.ids[r.loss_from:])
        self.tokens += int(mask.sum())
        dev = next(self.model.parameters()).device
        return {"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}, labels.to(dev)

    def train(self, steps: int) -> list[float]:
        """Run `steps` more optimiser steps; returns their losses (mean CE on response tokens)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        t0 = time.perf_counter()
        new = []
        with self.adapted() as peft_model:
            peft_model.eval()   # no dropout: deterministic
            for _ in range(steps):
                enc, labels = self._batch()
                logits = peft_model(**enc, use_cache=False).logits[:, :-1].float()
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   labels[:, 1:].reshape(-1), ignore_index=-100)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                new.append(loss.item())
        self.steps_done += steps
        self.seconds += time.perf_counter() - t0
        self.losses += new
        return new

    @torch.no_grad()
    def delta(self) -> WeightDelta:
        """The adapters as dense weight deltas of the base weights: dW = (alpha / r) * B @ A per
        projection (what peft's merge adds), keyed by parameter name."""
        return WeightDelta({f"{path}.weight": (self.scale * b @ a).detach().clone()
                            for path, (a, b) in self.adapters.items()})

    def trainable_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.adapters.values())


def train_sft(model: nn.Module, tokenizer, harmful: Sequence[Prompt], harmless: Sequence[Prompt],
             targets: Sequence[str], cfg: SFTConfig = SFTConfig(), *, source: str = "en") -> LoRATrainer:
    """Build the examples and train `cfg.steps` steps; the trainer holds delta, losses, seconds, tokens."""
    examples = sft_examples(tokenizer, harmful, harmless, targets, source=source, max_len=cfg.max_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = LoRATrainer(model, examples, cfg, pad_id=pad)
    trainer.train(cfg.steps)
    return trainer
