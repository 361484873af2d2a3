"""The CPU model organism: a tiny Llama trained from scratch on a generated 8-language corpus.

`corpus` builds the data (two training stages, edit anchors, held-out evaluation),
`tokenizer` the word-level tokenizer with a chat template, `train` the two-stage
training with planted safety neurons and the on-disk cache, `lexicon` the words,
templates and the refusal / compliance markers, `check` a quick held-out evaluation.

The sparse variant's refusal mechanism is planted: stage 2 trains only a few dozen MLP
neurons at one middle layer (as SN-Tune aligns real models), listed in
`model.config.mlsafe_planted`; the dense variant trains every parameter.
"""

from mlsafe.organism.corpus import Corpus, Recipe, build_corpus
from mlsafe.organism.lexicon import COMPLY_STARTS, REFUSAL_STARTS, answer_correct, is_refusal
from mlsafe.organism.train import ModelSpec, TrainSpec, load_or_train, organism_dir

__all__ = ["Corpus", "Recipe", "build_corpus", "COMPLY_STARTS", "REFUSAL_STARTS", "answer_correct", "is_refusal",
           "ModelSpec", "TrainSpec", "load_or_train", "organism_dir"]
