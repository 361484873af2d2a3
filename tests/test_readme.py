"""The README's Python example runs exactly as printed (its fenced block is executed here),
in a folder holding the two files it names: tiny-models/qwen2 and my_anchors.jsonl."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text.split("## Use it on your own model", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README has no python block under 'Use it on your own model'"
    return blocks[0]


@pytest.mark.slow
def test_readme_example_runs_as_printed(tmp_path, monkeypatch):
    from mlsafe import tiny
    from mlsafe.data import anchors
    from mlsafe.suites import real_suite

    tiny.build(tmp_path / "tiny-models")
    suite = real_suite("fixtures")
    keep = {"en", "th"}
    anchors.write(tmp_path / "my_anchors.jsonl", [p for p in suite.anchors_harmful if p.lang in keep],
                  [p for p in suite.anchors_harmless if p.lang in keep])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_example(), "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    edit = namespace["edit"]
    assert (tmp_path / "th.safetensors").is_file()
    assert edit.hparams["targets"] == ["th"] and edit.neurons.numel() > 0
