"""The prompt record every data source (organism corpus or real data set) produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One user request.

    id:          unique within its data set.
    lang:        language code (see mlsafe.langs).
    text:        the user message, without chat template.
    harmful:     True for a harmful request.
    parallel_id: the same for translations of one request across languages.
    answer:      the verifiable answer of a harmless task (exact match), else None.
    response:    a reference response (e.g. the refusal or the answer) used where
                 whole conversations are probed; None when unknown.
    source:      the data set the prompt comes from (e.g. "polyrefuse-test", "multijail",
                 "templated"), reported beside every number; None when not recorded.
    cluster:     the unit the prompt was drawn by, for cluster-robust intervals: the
                 template for templated prompts, the source prompt for translated sets
                 (so it also pairs languages); None means the prompt is its own cluster.
    """

    id: str
    lang: str
    text: str
    harmful: bool
    parallel_id: str
    answer: str | None = None
    response: str | None = None
    source: str | None = None
    cluster: str | None = None
