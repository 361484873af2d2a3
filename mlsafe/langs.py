"""The paper's eight languages (Sec. 5) and their resource tiers."""

from __future__ import annotations

LANGS: tuple[str, ...] = ("en", "zh", "vi", "ja", "th", "id", "bn", "he")
SOURCE = "en"
TARGETS: tuple[str, ...] = tuple(lang for lang in LANGS if lang != SOURCE)

#: Resource tier of each language, as the paper groups them (high -> low).
TIERS: dict[str, str] = {
    "en": "source",
    "zh": "high", "vi": "high",
    "ja": "medium", "th": "medium", "id": "medium",
    "bn": "low", "he": "low",
}

NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "vi": "Vietnamese", "ja": "Japanese",
    "th": "Thai", "id": "Indonesian", "bn": "Bengali", "he": "Hebrew",
}


def parse_targets(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Turn a LANG value ("th", "all", "th,bn" or a list) into target language codes.

    "all" means the seven non-English languages at once (the paper stacks them into
    one edit). Raises ValueError naming the valid codes for anything else.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip().lower() for s in items if s.strip()]
    if items == ["all"]:
        return list(TARGETS)
    if not items:
        raise ValueError(f"no target language given; use one of {', '.join(TARGETS)} or 'all'")
    bad = [s for s in items if s not in TARGETS]
    if bad:
        hint = " ('en' is the source language, not a target)" if "en" in bad else ""
        raise ValueError(
            f"unknown target language(s) {bad}{hint}; use one or more of "
            f"{', '.join(TARGETS)} (comma-separated) or 'all'"
        )
    return list(dict.fromkeys(items))


_CODE = __import__("re").compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*")


def parse_codes(spec: str | list[str] | tuple[str, ...], source: str = SOURCE) -> list[str]:
    """Like parse_targets, but any well-formed language code is accepted (ISO 639 letters,
    optional subtags, e.g. "sw", "pt-br"): for targets whose anchors come from the user's own
    data. "all" still means the paper's seven. Raises ValueError for malformed codes or the
    source language."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip().lower() for s in items if s.strip()]
    if items == ["all"]:
        return list(TARGETS)
    bad = [s for s in items if not _CODE.fullmatch(s) or s == source]
    if not items or bad:
        raise ValueError(f"bad target language code(s) {bad or items}: use codes like th, bn, sw, pt-br "
                         f"(comma-separated), not the source language {source!r}")
    return list(dict.fromkeys(items))


def target_key(targets: list[str]) -> str:
    """The results folder name for a set of targets: the code, or 'all'."""
    if sorted(targets) == sorted(TARGETS):
        return "all"
    return "+".join(targets)
