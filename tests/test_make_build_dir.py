"""Where `make` writes executed chapters and the site (mk/book.mk), read from dry runs (`make -n`).

The default run (the book's model) rebuilds every chapter into book/chapters and the site
into _build/html; a run for any other model writes under _build/<model slug>/ and names no
path in book/chapters at all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlsafe.results import model_slug

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.md"))

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv/bin/python").exists(),
                                reason="needs make and the project's .venv")


def dry(*args: str) -> list[str]:
    """The commands `make -n ARGS` would run (recursive makes run, as dry runs, too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k not in ("MODEL", "MFLAGS")}
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def papermill_outputs(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := re.search(r"papermill \S+ (\S+) ", line))]


def book_builds(lines: list[str]) -> list[tuple[str, str]]:
    """(path-output, source) of every jupyter-book build."""
    return [(m.group(1), m.group(2)) for line in lines
            if (m := re.search(r"jupyter-book build .*--path-output (\S+) (\S+)\s*$", line))]


def tokens(lines: list[str]) -> list[str]:
    return [t.strip("'\";") for line in lines for t in line.split()]


def test_default_reproduce_rebuilds_every_chapter_of_the_book():
    lines = dry("reproduce")
    assert sorted(papermill_outputs(lines)) == [f"book/chapters/{c}.ipynb" for c in CHAPTERS]
    assert book_builds(lines) == [(".", ".")]


def test_a_run_for_another_model_never_touches_book_chapters():
    lines = dry("reproduce", "MODEL=organism-dense")        # a model whose policy rebuilds chapters
    outs = papermill_outputs(lines)
    assert sorted(outs) == [f"_build/organism-dense/chapters/{c}.ipynb" for c in CHAPTERS]
    assert book_builds(lines) == [("_build/organism-dense", "_build/organism-dense/src")]
    assert not [t for t in tokens(lines) if t.startswith(("book/chapters", "./book/chapters"))]


def test_own_model_folder_goes_to_its_slug(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    slug = model_slug(str(folder))
    lines = dry("notebook-01_safety_gap", "notebook-09_real_model", "book", f"MODEL={folder}")
    assert papermill_outputs(lines) == [f"_build/{slug}/chapters/01_safety_gap.ipynb",
                                        f"_build/{slug}/chapters/09_real_model.ipynb"]
    assert book_builds(lines) == [(f"_build/{slug}", f"_build/{slug}/src")]
    assert not [t for t in tokens(lines) if t.startswith("book/chapters")]
    # reproduce for a model without chapters in its run policy builds no book at all
    lines = dry("reproduce", "MODEL=tiny-llama")
    assert papermill_outputs(lines) == [] and book_builds(lines) == []
    assert not [t for t in tokens(lines) if t.startswith("book/chapters")]


def test_a_chapters_own_model_rebuilds_only_that_chapter_in_the_book():
    lines = dry("reproduce", "MODEL=gemma-270m")
    assert papermill_outputs(lines) == ["book/chapters/08_gemma.ipynb"]
    assert book_builds(lines) == [(".", ".")]


def test_reproduce_threads_follow_the_policy_unless_given():
    """OMP_NUM_THREADS of the run: the backend's (mlsafe.backends.threads_for) when the user
    gives none, the user's otherwise (environment or command line)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MAKE") and k not in ("MODEL", "MFLAGS", "OMP_NUM_THREADS")}

    def run_line(*args, extra_env=None):
        out = subprocess.run(["make", "-n", "--no-print-directory", "reproduce", *args], cwd=ROOT,
                             env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if "-m mlsafe reproduce" in line)

    assert run_line("MODEL=qwen2.5-coder-0.5b").startswith(
        "OMP_NUM_THREADS=$(.venv/bin/python -m mlsafe.backends threads qwen2.5-coder-0.5b) ")
    assert run_line("MODEL=qwen2.5-coder-0.5b", extra_env={"OMP_NUM_THREADS": "3"}).startswith("OMP_NUM_THREADS=3 ")
    assert run_line("OMP_NUM_THREADS=4").startswith("OMP_NUM_THREADS=4 ")
