"""The packaged Gemma-3-270m backbone: checkpoint, prompts, English-only safety tune.

`load_or_tune(seed)` gives the tuned chat model (mlsafe.gemma.sft); the data, judge and
margin strings the pipeline needs for MODEL=gemma-270m are mlsafe.suites.gemma_suite.
"""

from __future__ import annotations

from mlsafe.gemma.checkpoint import load_gemma
from mlsafe.gemma.sft import COMPLY_STARTS, REFUSAL_STARTS, is_refusal, load_or_tune

__all__ = ["load_gemma", "load_or_tune", "is_refusal", "REFUSAL_STARTS", "COMPLY_STARTS"]
