"""Real data sets (StrongREJECT, Multi-StrongREJECT, MultiJail, anchors, MGSM, MMMLU),
their bundled fixtures, the anchor/test overlap check and the translation step (the suite
built from them is mlsafe.suites.real_suite)."""

from mlsafe.data.loaders import (
    FIXTURES_DIR, MGSM_LANGS, MMMLU_CONFIGS, MULTIJAIL_LANGS, PINNED, DataUnavailable, data_root,
    load_anchors_harmful, load_anchors_harmless, load_mgsm, load_mmmlu, load_multi_strongreject,
    load_multijail, load_strongreject, load_table, read_parallel_folder, write_parallel_folder,
)
from mlsafe.data.overlap import check_no_overlap, find_overlaps, normalise_prompt
from mlsafe.data.translate import mt_instruction, translate

__all__ = [
    "FIXTURES_DIR", "MGSM_LANGS", "MMMLU_CONFIGS", "MULTIJAIL_LANGS", "PINNED", "DataUnavailable",
    "data_root", "load_anchors_harmful", "load_anchors_harmless", "load_mgsm", "load_mmmlu",
    "load_multi_strongreject", "load_multijail", "load_strongreject", "load_table",
    "read_parallel_folder", "write_parallel_folder",
    "check_no_overlap", "find_overlaps", "normalise_prompt", "mt_instruction", "translate",
]
