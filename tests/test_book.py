"""The book's infrastructure, end to end, on a throw-away book in a temporary folder.

A small notebook goes through the real recipes of mk/book.mk (jupytext -> papermill ->
jupyter-book build -W -n --keep-going -> nbval) with the real _config.yml and offline
JavaScript, then headless Chromium checks the built pages and moves the lab slider.
Chromium (Debian package) is installed when missing and running as root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = Path(sys.executable)
sys.path.insert(0, str(ROOT / "scripts"))
import browser_check  # noqa: E402

# Tests on the throw-away book take about 30 s together (one papermill run, one book
# build, one nbval run, one Chromium session); `make test-fast` leaves them out.
slow = pytest.mark.slow

SUMMARY = {"model": "organism", "target_langs": ["bn"], "seed": 0,
           "asr": {"before": {"en": 0.05, "bn": 0.6125}, "after": {"en": 0.05, "bn": 0.3371}}}

# Reads summary.json from its working folder (papermill --cwd and nbval both run a
# notebook in its own folder), so two copies side by side can read different numbers.
NOTEBOOK = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Lab test page

```{code-cell} ipython3
:tags: [parameters]

LANG = "xx"
MODEL = "organism"
DEVICE = "cpu"
SEED = 0
```

```{code-cell} ipython3
import json, struct, zlib
import ipywidgets as widgets
from myst_nb import glue

summary = json.load(open("summary.json"))
glue("asr_after", float(summary["asr"]["after"][LANG]))
```

The edit leaves an ASR of {glue:text}`asr_after:.3f` in Bengali, $\\mathrm{ASR} \\in [0, 1]$.

```{code-cell} ipython3
:tags: [nbval-ignore-output]

def png(rgb, w=60, h=40):  # a solid-colour PNG, no plotting library needed
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    rows = b"".join(b"\\0" + bytes(rgb) * w for _ in range(h))
    return (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))

slider = widgets.IntSlider(value=0, min=0, max=2, description="rank index")
stack = widgets.Stack([widgets.Image(value=png(c), format="png")
                       for c in [(200, 40, 40), (40, 160, 40), (40, 40, 200)]], selected_index=0)
widgets.jslink((slider, "value"), (stack, "selected_index"))
widgets.VBox([slider, stack])
```
"""

MAKEFILE = f"""\
PY := {PY}
VENV_STAMP :=
TARGET_LANG := $(LANG)
override LANG := C.UTF-8
export LANG
include {ROOT}/mk/book.mk
"""


def _make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "MAKE"))}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A throw-away book using the real config, executed with LANG=bn and built."""
    tmp = tmp_path_factory.mktemp("book")
    (tmp / "notebooks").mkdir()
    (tmp / "notebooks" / "lab.md").write_text(NOTEBOOK)
    (tmp / "book" / "chapters").mkdir(parents=True)
    (tmp / "book" / "chapters" / "summary.json").write_text(json.dumps(SUMMARY))
    shutil.copy(ROOT / "book" / "references.bib", tmp / "book" / "references.bib")
    # a minimal root page: the real intro links chapters and glossary entries this book lacks
    (tmp / "book" / "intro.md").write_text("# A throw-away book\n\nThe lab of {cite:p}`liang2026multilingual`."
                                           "\n\n## References\n\n```{bibliography}\n```\n")
    (tmp / "book" / "assets").symlink_to(ROOT / "book" / "assets")
    shutil.copy(ROOT / "_config.yml", tmp / "_config.yml")
    (tmp / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/chapters/lab\n")
    (tmp / "Makefile").write_text(MAKEFILE)
    for target in ("notebooks", "book"):
        done = _make(tmp, target, "LANG=bn")
        assert done.returncode == 0, f"make {target} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return tmp


@slow
def test_papermill_injects_the_target_language(project):
    nb = nbformat.read(project / "book/chapters/lab.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    assert 'LANG = "bn"' in injected[0].source and "SEED = 0" in injected[0].source
    assert "application/vnd.jupyter.widget-state+json" in nb.metadata.widgets


@slow
def test_book_builds_offline_without_warnings(project):
    page = (project / "_build/html/book/chapters/lab.html").read_text()
    assert (project / "_build/html/index.html").is_file()
    assert "0.337" in page  # the glued number, formatted in the prose
    assert "_static/vendor/mathjax/tex-chtml-full.js" in page
    assert "_static/vendor/html-manager/embed-amd.js" in page
    assert not re.search(r'<script[^>]+src="https?://', page), "a script loads from the network"


@slow
def test_nbval_passes_and_fails_when_a_result_changes(project):
    changed = project / "changed"
    changed.mkdir()
    shutil.copy(project / "book/chapters/lab.ipynb", changed / "lab_changed.ipynb")
    edited = json.loads(json.dumps(SUMMARY))
    edited["asr"]["after"]["bn"] = 0.3471
    (changed / "summary.json").write_text(json.dumps(edited))
    (project / "pytest.ini").write_text("[pytest]\n")  # not the repository's settings
    done = subprocess.run(
        [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
         "--nbval-sanitize-with", ROOT / "tests/nbval_sanitize.cfg", "-rf",
         "book/chapters", "changed"],
        cwd=project, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    failed = re.findall(r"^FAILED (\S+)", done.stdout, flags=re.M)
    assert done.returncode == 1, done.stdout[-3000:]
    assert failed and all("lab_changed.ipynb" in f for f in failed), done.stdout[-3000:]
    assert re.search(r"(\d+) passed", done.stdout), done.stdout[-3000:]


@pytest.fixture(scope="module")
def browsed(project):
    """One Chromium session over the built lab page, the redirect and a broken page."""
    site = project / "_build/html"  # make browser-check covers every page; these suffice here
    (site / "broken.html").write_text(
        '<html><body><img src="missing.png"><script>undefinedFunction()</script>'
        '<img src="https://example.org/x.png"></body></html>')
    chromium = browser_check.chromium_executable(install=os.geteuid() == 0)
    pages = [site / "index.html", site / "book/chapters/lab.html", site / "broken.html"]
    reports = browser_check.run(site, project / "_build/screenshots", chromium, pages=pages)
    return {r.page: r for r in reports}


@slow
def test_browser_renders_pages_and_lab_slider_changes_figure(project, browsed):
    assert not browsed["index.html"].problems
    lab = browsed["book/chapters/lab.html"]
    assert not lab.problems, lab.problems
    assert lab.sliders_moved == 1
    shots = project / "_build/screenshots"
    before, after = ((shots / f"book__chapters__lab__lab0_{s}.png").read_bytes()
                     for s in ("before", "after"))
    assert before != after


@slow
def test_browser_check_reports_broken_pages(browsed):
    text = "\n".join(browsed["broken.html"].problems)
    assert "broken image" in text and "missing.png" in text
    assert "undefinedFunction" in text
    assert browsed["(network)"].problems == ["request off the machine: https://example.org/x.png"]


def test_sanitize_masks_noise_but_not_results():
    from nbval.plugin import get_sanitize_patterns

    rules = get_sanitize_patterns((ROOT / "tests/nbval_sanitize.cfg").read_text())

    def clean(s: str) -> str:
        for regex, replace in rules:
            s = re.sub(regex, replace, s)
        return s

    assert clean("41.234559999999995") == clean("np.float64(41.23456)")
    assert clean("<Figure at 0x7f3a2b4c5d60>") == clean("<Figure at 0x55d0aa112233>")
    assert clean("solved in 0.02 s") == clean("solved in 1.5 s")
    assert clean("a\n 50%|#####     | 5/10 [00:01<00:01,  4.99it/s]\nb") == "a\nTQDM-BAR\nb"
    assert clean("ASR 0.3371") != clean("ASR 0.3471")
    assert clean("/work/main/results/organism/th") == clean("/home/ci/x/results/organism/th")
    assert clean("rank 8, 40 neurons") == "rank 8, 40 neurons"


def test_offline_assets_match_their_checksums_and_config():
    vendor = ROOT / "book/assets/vendor"
    lines = (vendor / "SHA256SUMS").read_text().splitlines()
    assert len(lines) > 5
    for line in lines:
        digest, name = line.split(maxsplit=1)
        path = vendor / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{name} changed: make book-vendor"
        assert path.stat().st_size < 5_000_000, f"{name} is over 5 MB"
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
    static = [ROOT / p for p in sphinx["html_static_path"]]
    for rel in [sphinx["mathjax_path"], *sphinx["nb_ipywidgets_js"]]:
        assert not rel.startswith(("http:", "https:", "//")), rel
        assert any((s / rel).is_file() for s in static), f"{rel} not in html_static_path"
    assert "sphinx.ext.intersphinx" not in sphinx["extensions"]


def test_make_keeps_target_language_out_of_the_locale(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "ch.md").write_text(NOTEBOOK)
    (tmp_path / "Makefile").write_text(MAKEFILE)
    done = _make(tmp_path, "-n", "notebooks", "LANG=th", "RANK=16")
    assert done.returncode == 0, done.stderr
    assert "-r LANG th" in done.stdout and "-p RANK 16" in done.stdout
    assert "LANG=C.UTF-8 LC_ALL=C.UTF-8" in done.stdout
    assert "SPARSITY" not in done.stdout


# ----------------------------------------------------------------------------- the committed book
# Checks on the executed chapters in book/chapters/ (what the site renders): one source per
# number. Fast: they read the notebooks' JSON, nothing is executed.
CHAPTERS = ROOT / "book" / "chapters"
SOURCES = sorted((ROOT / "notebooks").glob("0[1-8]_*.md"))
ORGANISM_BOX = "What the model organism can and cannot show"


def _params(nb) -> dict[str, str]:
    """MODEL and LANG a notebook was executed with (papermill's injected cell, else the defaults)."""
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])] or \
        [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    src = "\n".join(c.source for c in cells)
    found = dict(re.findall(r'^(MODEL|LANG) = "([^"]*)"', src, flags=re.M))
    return {"MODEL": found.get("MODEL", ""), "LANG": found.get("LANG", "")}


def _glued(nb) -> dict[str, str]:
    """Every value a notebook glues, as the text the page prints (myst-nb literal-evals text/plain)."""
    import ast

    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            text = o["data"].get(meta["mime_prefix"] + "text/plain")
            if text is not None:
                try:
                    out[meta["name"]] = str(ast.literal_eval(text))
                except (ValueError, SyntaxError):
                    out[meta["name"]] = text
    return out


@pytest.fixture(scope="module")
def executed() -> dict[str, tuple[dict, dict]]:
    """name -> (parameters, glued values) of every executed chapter 1-8."""
    out = {}
    for path in sorted(CHAPTERS.glob("0[1-8]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        out[path.stem] = (_params(nb), _glued(nb))
    assert len(out) == 8, sorted(out)
    return out


def test_shared_quantities_are_printed_identically_on_every_page(executed):
    """Neuron counts, per-seed ASR/utility, fit time, the utility definition: every page that
    shows one of them (glued as fact_*, or org_fact_* for the organism inside chapter 8)
    prints the same text, and that text is what mlsafe.report computes from results/ now."""
    from mlsafe import report
    from mlsafe.langs import parse_targets, target_key
    from mlsafe.results import read_json, results_dir

    seen: dict[tuple[str, str, str], dict[str, str]] = {}
    for name, (params, glued) in executed.items():
        for key, value in glued.items():
            if key.startswith("org_fact_"):
                seen.setdefault(("organism", params["LANG"], key[4:]), {})[name] = value
            elif key.startswith("fact_"):
                seen.setdefault((params["MODEL"], params["LANG"], key), {})[name] = value
    pages = {(m, k): v for (m, _, k), v in seen.items()}
    assert len(pages[("organism", "fact_n_neurons")]) >= 5, pages[("organism", "fact_n_neurons")]
    assert len(pages[("organism", "fact_utility_def")]) >= 5
    for (model, lang, key), by_page in seen.items():
        assert len(set(by_page.values())) == 1, f"{key} of {model}/{lang} differs between pages: {by_page}"
        facts = report.book_facts(read_json(results_dir(model, target_key(parse_targets(lang))) / "summary.json"))
        assert set(by_page.values()) == {facts[key]}, \
            f"{key} of {model}/{lang} is stale on {sorted(by_page)}: re-execute (make notebook-NAME)"


def test_lab_grid_uses_seed0_edit_set(executed):
    _, lab = executed["06_lab"]
    assert lab["n_safety"] == lab["fact_n_neurons"].split(" / ")[0]


def test_intro_references_glued_values_that_exist(executed):
    refs = re.findall(r"\{glue:text\}`chapters/([\w.]+)\.ipynb::(\w+):s`", (ROOT / "book/intro.md").read_text())
    assert len(refs) >= 10
    for chapter, key in refs:
        assert key in executed[chapter][1], f"intro.md pastes {key} from {chapter}, which does not glue it"


def test_glossary_defines_each_term_once_with_the_report_wording():
    from mlsafe import report

    text = (ROOT / "book/glossary.md").read_text()
    block = text.split("```{glossary}", 1)[1].split("```", 1)[0]
    terms = re.findall(r"^(\S.*)$", block, flags=re.M)
    for term in ("ASR", "Refusal margin", "Over-refusal", "Utility", "First-token KL", "Gap closed",
                 "Unclear", "Cluster interval"):
        assert terms.count(term) == 1, f"{term!r} defined {terms.count(term)} times"
    assert report.UTILITY_DEF in " ".join(block.split())
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert {"file": "book/glossary"} in toc["chapters"]


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_chapter_is_a_lesson(source):
    """Overview, objectives, exercises, no internal issue references, and the organism box
    on every page that reads organism results."""
    text = source.read_text()
    assert "**Overview.**" in text and "**You will learn**" in text and "## Exercises" in text
    assert not re.search(r"\bissues? \d", text), "internal issue reference"
    params = _params(nbformat.read(CHAPTERS / f"{source.stem}.ipynb", as_version=4))
    reads_results = "results_dir(MODEL" in text
    if params["MODEL"] == "organism" and reads_results:
        assert ORGANISM_BOX in text, f"{source.name} uses the organism without saying what it cannot show"
