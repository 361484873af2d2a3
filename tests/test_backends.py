"""mlsafe.backends: the registry, its entries' loaders and suite factories, the folder/hub
fallback, and make_suite reading the registry."""

from __future__ import annotations

import importlib.util

import pytest

from mlsafe import backends, gemma, models, organism, packaged, suites, tiny
from mlsafe.backends import Backend, backend_for, get_backend, register_backend
from mlsafe.models import LoadedModel

ENTRIES = ("organism", "organism-dense", "gemma-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


@pytest.fixture(scope="module")
def tiny_pair():
    tok = tiny.build_tokenizer("qwen2")
    return tiny.build_model("qwen2", tok, seed=0), tok


def test_registry_holds_the_entries():
    assert tuple(backends.BACKENDS) == ENTRIES
    for name in ENTRIES:
        b = get_backend(name)
        assert b.name == name and backend_for(name) is b
        assert {"edit_preset", "seeds", "baselines", "extras"} <= set(b.defaults)
    assert get_backend("no-such-model") is None and get_backend(None) is None
    assert get_backend("organism").defaults["baselines"] and not get_backend("qwen2.5-coder-0.5b").defaults["extras"]


def test_every_entry_resolves_its_loader(monkeypatch, tiny_pair):
    """Each loader runs (with its heavy model source replaced by a tiny model) and names its backend."""
    model, tok = tiny_pair
    seen = []
    monkeypatch.setattr(organism, "load_or_train", lambda seed, variant: seen.append(variant) or (model, tok))
    monkeypatch.setattr(gemma, "load_or_tune", lambda seed: (model, tok))
    monkeypatch.setattr(packaged, "load", lambda spec: seen.append(spec.key) or (model, tok))
    kinds = {"organism": "organism", "organism-dense": "organism", "gemma-270m": "gemma-270m",
             "qwen2.5-coder-0.5b": "packaged", "qwen2.5-coder-1.5b": "packaged"}
    for name in ENTRIES:
        lm = models.load_model(name, "cpu", seed=0)
        assert (lm.name, lm.kind, lm.backend) == (name, kinds[name], name) == (name, get_backend(name).kind, name)
    assert seen == ["sparse", "dense", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def test_suite_factories_resolve_or_fail_clearly():
    for name in ("organism", "organism-dense", "gemma-270m"):
        assert callable(get_backend(name).suite_factory())
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):  # written by another module; may be absent
        b = get_backend(name)
        assert b.suite == "mlsafe.data.real:real_model_suite"
        if importlib.util.find_spec("mlsafe.data.real") is None:
            with pytest.raises(ImportError, match=f"backend '{name}': its suite factory"):
                b.suite_factory()
        else:
            assert b.suite_factory().__name__ == "real_model_suite"
    broken = Backend("broken", "hub", lambda seed, device: None, "mlsafe.suites:no_such_function")
    with pytest.raises(ImportError, match="'mlsafe.suites:no_such_function' cannot be imported"):
        broken.suite_factory()


def test_register_refuses_duplicates_and_bad_suite_names():
    with pytest.raises(ValueError, match="already registered"):
        register_backend(get_backend("organism"))
    with pytest.raises(ValueError, match="'module:function'"):
        register_backend(Backend("x-new", "hub", lambda seed, device: None, "mlsafe.suites.make_suite"))
    assert "x-new" not in backends.BACKENDS


def test_unknown_names_fall_back_to_hub_with_the_clear_error(tmp_path):
    b = backend_for("no-such-model")
    assert b.kind == "hub" and get_backend("no-such-model") is None
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a hub id.*built-in names are "
                                                "organism, organism-dense, gemma-270m, qwen2.5-coder-0.5b"):
        models.load_model("no-such-model")
    assert backend_for("owner/name").kind == "hub" and backend_for(str(tmp_path)).kind == "hub"


def test_tiny_folders_are_tiny_and_get_the_fixture_suite(tiny_dir):
    assert backend_for(str(tiny_dir)).kind == "tiny"
    lm = models.load_model(str(tiny_dir))
    assert (lm.kind, lm.backend, lm.path) == ("tiny", None, str(tiny_dir))
    suite = suites.make_suite(lm, "auto", 0, "cpu")
    assert suite.name == "fixtures" and suite.judge.name == "refusal-phrase"


def test_make_suite_for_the_organism_reads_the_registry(tiny_pair):
    model, tok = tiny_pair
    lm = LoadedModel(model, tok, "organism", "organism", backend="organism")
    suite = suites.make_suite(lm, "auto", 0, "cpu")
    assert suite.name == "organism-corpus" and suite.max_new_tokens == 12 and suite.planted is None
    assert suite.eval_harmful and all(p.harmful for p in suite.eval_harmful)
    assert not any(p.harmful for p in suite.anchors_harmless)
    # the same model without a backend is a plain model: the real-data suite, not the organism's
    plain = LoadedModel(model, tok, "organism", "tiny")
    assert suites.make_suite(plain, "auto", 0, "cpu").name == "fixtures"


def test_pipeline_still_exports_the_moved_names():
    from mlsafe import pipeline

    assert pipeline.Suite is suites.Suite and pipeline.make_suite is suites.make_suite
    assert pipeline.organism_suite is suites.organism_suite


def test_policy_cli_reads_the_registry(capsys):
    from mlsafe import backends

    assert backends.main(["get", "organism", "seeds"]) == 0
    assert capsys.readouterr().out.strip() == "0 1 2"
    assert backends.main(["get", "gemma-270m", "ablations"]) == 0
    assert capsys.readouterr().out.strip() == "multi_layer"
    assert backends.main(["get", "qwen2.5-coder-0.5b", "baselines"]) == 0
    assert capsys.readouterr().out.strip() == "0"
    assert backends.main(["threads", "organism"]) == 0          # its committed numbers: one thread
    assert capsys.readouterr().out.strip() == "1"
    assert backends.main(["threads", "qwen2.5-coder-0.5b"]) == 0  # a real model: every core
    assert int(capsys.readouterr().out) == len(__import__("os").sched_getaffinity(0))
    assert backends.main(["get", "organism", "no-such-key"]) == 2
    assert "no policy key" in capsys.readouterr().err
    # the extra of a registered packaged model is named only when it is missing
    assert backends.main(["missing-extra", "organism"]) == 0
    assert capsys.readouterr().out.strip() == ""
    backends.main(["missing-extra", "qwen2.5-coder-0.5b"])
    out = capsys.readouterr().out.strip()
    assert out == ("" if backends.extra_installed(backends.get_backend("qwen2.5-coder-0.5b")) else "qwen05")
