"""Shared fixtures and the test layers.

Fixtures (session-scoped, built once per pytest run):
  tiny_dir     a tiny random Qwen2 folder (mlsafe.tiny.build, seed 0): the "build a tiny
               folder" step several test files shared; tests only read it.
  tiny_loaded  (folder, LoadedModel, Suite) of that folder: mlsafe.models.load_model and
               mlsafe.suites.make_suite(lm, "auto", 0, "cpu") (the bundled fixtures, phrase
               judge). Tests that edit the model restore it (every edit here reverts
               bit-exactly, and the tests that edit check it).

Layers: every test gets one marker by its file (`LAYERS`), so `pytest -m unit` runs the
tensor/pure-function tests, `-m integration` those that build or load a model (tiny random,
organism, packaged), `-m book` those of the book, the notebooks and the README. A test file
missing from the table fails tests/test_house.py.
"""

from __future__ import annotations

import pytest

UNIT, INTEGRATION, BOOK = "unit", "integration", "book"
MARKERS = {
    UNIT: "tensors and pure functions, no model",
    INTEGRATION: "builds or loads a model (tiny random, organism, packaged) or runs a CLI end to end",
    BOOK: "the book, its notebooks, the build folders and the README's example",
}
#: test file (relative to tests/) -> layer; a folder ending in "/" covers every file under it.
LAYERS = {
    "test_anchors.py": UNIT, "test_corpus.py": UNIT, "test_generation_budget.py": UNIT, "test_house.py": UNIT,
    "test_judge_cli.py": UNIT, "test_judge_dev_real.py": UNIT, "test_limits.py": UNIT, "test_presets.py": UNIT, "test_neurons.py": UNIT,
    "test_paper.py": UNIT,
    "test_report.py": UNIT, "test_solver.py": UNIT, "test_stats.py": UNIT,
    "test_ablations.py": INTEGRATION, "test_arch.py": INTEGRATION, "test_backends.py": INTEGRATION,
    "test_baselines.py": INTEGRATION, "test_ceiling.py": INTEGRATION, "test_chat.py": INTEGRATION,
    "test_cli_tools.py": INTEGRATION, "test_data.py": INTEGRATION, "test_diagnostics.py": INTEGRATION,
    "test_edit.py": INTEGRATION, "test_evaluate.py": INTEGRATION, "test_export.py": INTEGRATION,
    "test_finetune_peft.py": INTEGRATION, "test_gemma.py": INTEGRATION, "test_judges.py": INTEGRATION,
    "test_kl.py": INTEGRATION, "test_lab.py": INTEGRATION, "test_organism.py": INTEGRATION,
    "test_packaged.py": INTEGRATION, "test_pipeline.py": INTEGRATION, "test_prefix.py": INTEGRATION, "test_draft.py": INTEGRATION, "test_trunk.py": INTEGRATION,
    "test_probe.py": INTEGRATION,
    "test_real_data.py": INTEGRATION, "test_results.py": INTEGRATION, "test_tiny.py": INTEGRATION,
    "test_transfer.py": INTEGRATION, "test_stack.py": INTEGRATION, "test_trials.py": INTEGRATION,
    "reliability/": INTEGRATION,
    "test_book.py": BOOK, "test_make_build_dir.py": BOOK, "test_readme.py": BOOK,
}


def layer_of(relpath: str) -> str | None:
    """The layer of a test file given relative to tests/ (posix), or None when not in LAYERS."""
    if relpath in LAYERS:
        return LAYERS[relpath]
    return next((layer for key, layer in LAYERS.items() if key.endswith("/") and relpath.startswith(key)), None)


def pytest_configure(config):
    for name, what in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(config, items):
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if here in path.parents:
            layer = layer_of(path.relative_to(here).as_posix())
            if layer is not None:
                item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from mlsafe import tiny

    return tiny.build(tmp_path_factory.mktemp("tiny"), seed=0, archs=("qwen2",))["qwen2"]


@pytest.fixture(scope="session")
def tiny_loaded(tiny_dir):
    from mlsafe.models import load_model
    from mlsafe.suites import make_suite

    lm = load_model(str(tiny_dir), "cpu")
    return tiny_dir, lm, make_suite(lm, "auto", 0, "cpu")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Every architecture of mlsafe.tiny, loaded: {arch: LoadedModel}."""
    from mlsafe import tiny
    from mlsafe.models import load_model

    folders = tiny.build(tmp_path_factory.mktemp("tiny_archs"), seed=0)
    return {arch: load_model(str(path), "cpu") for arch, path in folders.items()}


def _gemma3(tok, window: int):
    """A random two-layer Gemma 3 (one sliding-window layer of `window` tokens) on `tok`."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              bos_token_id=tok.bos_token_id, initializer_range=0.3)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


@pytest.fixture(scope="session")
def fast_path_models(tiny_models):
    """(name, model, tokenizer) of every tiny architecture plus Gemma 3 with a sliding window
    shorter (8) and longer (512) than the test prompts: what the evaluation fast paths
    (mlsafe.evaluate.prefix, greedy, draft) are checked on."""
    out = [(arch, lm.model, lm.tokenizer) for arch, lm in tiny_models.items()]
    tok = tiny_models["qwen2"].tokenizer
    return out + [("gemma3-window-8", _gemma3(tok, 8), tok), ("gemma3-window-512", _gemma3(tok, 512), tok)]
