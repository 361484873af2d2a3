"""The organism's generated corpus: two training stages, edit anchors, held-out evaluation.

Stage 1 (pretraining-like): requests in all 8 languages, each answered as the data
says: harmful requests get a placeholder compliance, benign how-to requests get
placeholder ideas, list tasks get their exact answer, unanswerable requests get the
language's refusal; plus plain sentences and English<->X translation pairs.
Stage 2 (safety alignment, English only for safety): English harmful requests get the
refusal; English benign how-to requests, and list tasks and unanswerable requests in
all languages, keep their stage-1 answers.

Resource tiers (mlsafe.langs.TIERS) shape three things, all in `Recipe`:
data share, share of translation pairs with English, and code-switching (the chance
that a content word of a request is written as the English word); the numbers are
mlsafe.organism.recipe.Recipe's.

Splits are disjoint by construction: held-out harmful requests use persons and objects
never seen in any training request or anchor (they occur only in plain sentences) and
frames never seen with a harmful verb; held-out harmless tasks use templates (opener,
frame, suffix) never seen in training, with training words in unseen combinations
(copying a word never seen as an answer did not generalise at this scale).
Anchors use training templates and fillers but texts that occur in no training item.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from mlsafe.langs import LANGS, SOURCE, TIERS
import mlsafe.organism.lexicon as lx
from mlsafe.organism.recipe import Recipe
from mlsafe.prompts import Prompt

TIER_SHARE = {"source": 1.0, "high": 0.8, "medium": 0.6, "low": 0.45}


@dataclass
class Corpus:
    """The generated corpus. Lists of Prompt; `meta[prompt.id]` holds its template and fillers."""

    seed: int
    recipe: Recipe
    stage1: list[Prompt]
    stage2: list[Prompt]
    plain: list[str]                     # stage-1 plain sentences and translation pairs
    anchors_harmful: list[Prompt]
    anchors_harmless: list[Prompt]
    eval_harmful: list[Prompt]
    eval_harmless: list[Prompt]
    meta: dict[str, dict]

    def fingerprint(self) -> str:
        """sha256 of every text and response, in order (determinism checks)."""
        h = hashlib.sha256()
        for name in ("stage1", "stage2", "anchors_harmful", "anchors_harmless", "eval_harmful", "eval_harmless"):
            for p in getattr(self, name):
                h.update(f"{name}|{p.id}|{p.lang}|{p.text}|{p.response}|{p.answer}\n".encode())
        for s in self.plain:
            h.update(s.encode() + b"\n")
        return h.hexdigest()


# --- filler pools ----------------------------------------------------------------------

def _split_pool(keys, n_eval: int, rng: random.Random) -> tuple[list, list]:
    keys = list(keys)
    rng.shuffle(keys)
    return sorted(keys[n_eval:]), sorted(keys[:n_eval])


@dataclass
class _Pools:
    P: list
    O: list
    noun: list
    name: list
    number: list


def _pools(rng: random.Random) -> tuple[_Pools, _Pools]:
    parts = [
        _split_pool(lx.PERSONS, 3, rng), _split_pool(lx.OBJECTS, 3, rng), _split_pool(lx.NOUNS, 8, rng),
        _split_pool(lx.NAMES, 4, rng), _split_pool(lx.NUMBERS, 25, rng),
    ]
    return _Pools(*(p[0] for p in parts)), _Pools(*(p[1] for p in parts))


# --- abstract requests and their rendering ---------------------------------------------

def _spec(kind: str, template: tuple, pools: _Pools, rng: random.Random) -> dict:
    """An abstract request: kind, template (opener, frame, suffix) and slot fillers."""
    opener, frame, suffix = template
    fill: dict = {}
    if kind in ("harmful", "benign"):
        verbs = lx.HARM_VERBS if kind == "harmful" else lx.BENIGN_VERBS
        fill["V"] = ("V" if kind == "harmful" else "B", rng.choice(sorted(verbs)))
        fill["P"] = ("P", rng.choice(pools.P))
        fill["O"] = ("O", rng.choice(pools.O))
    elif kind == "task":
        items = [("noun", k) for k in rng.sample(pools.noun, 3)]
        if frame == "name":
            items[rng.randrange(3)] = ("name", rng.choice(pools.name))
        elif frame == "number":
            items[rng.randrange(3)] = ("number", rng.choice(pools.number))
        fill.update(zip("abc", items))
    elif kind == "unanswerable":
        fill["N"] = ("name", rng.choice(pools.name))
        fill["a"] = ("noun", rng.choice(pools.noun))
    return {"kind": kind, "template": list(template), "fill": fill}


def _answer_slot(spec: dict) -> str:
    frame = spec["template"][1]
    if frame == "repeat":
        return "a"
    want = "name" if frame == "name" else "number"
    return next(s for s, (k, _) in spec["fill"].items() if k == want)


def _surface(item, lang: str, cs: float, rng: random.Random) -> str:
    kind, key = item
    if kind in ("name", "number"):
        return key
    table = lx.CONTENT[kind][key]
    return table["en"] if lang != SOURCE and rng.random() < cs else table[lang]


def _render(spec: dict, lang: str, recipe: Recipe, rng: random.Random) -> tuple[str, str | None, str]:
    """-> (text, answer, response) of `spec` in `lang`, code-switching content words."""
    cs = recipe.code_switch.get(TIERS[lang], 0.0)
    opener, frame, suffix = spec["template"]
    kind = spec["kind"]
    frames = {"harmful": lx.HOWTO_FRAMES, "benign": lx.HOWTO_FRAMES, "task": lx.TASK_FRAMES,
              "unanswerable": lx.UNANSWERABLE_FRAMES}[kind]
    words = {slot: _surface(item, lang, cs, rng) for slot, item in spec["fill"].items()}
    core = frames[frame][lang].format(**{k: words.get(k, "") for k in ("V", "P", "O", "a", "b", "c", "N")})
    text = " ".join(s for s in (lx.OPENERS[opener][lang], core, lx.SUFFIXES[suffix][lang]) if s)
    answer = None
    if kind == "harmful":
        response = lx.COMPLIANCES[lang]
    elif kind == "benign":
        response = lx.IDEAS[lang]
    elif kind == "unanswerable":
        response = lx.REFUSALS[lang]
    else:
        answer = words[_answer_slot(spec)]
        response = f"{answer} ."
    return text, answer, response


def _templates(frames, openers=None, suffixes=None) -> list[tuple]:
    return [(o, f, s) for o in sorted(openers or lx.OPENERS) for f in frames for s in sorted(suffixes or lx.SUFFIXES)]


# --- the builder -------------------------------------------------------------------------

def build_corpus(seed: int = 0, recipe: Recipe | None = None) -> Corpus:
    """Generate the whole corpus, deterministically from `seed` (and `recipe`)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    recipe = recipe or Recipe()
    rng = random.Random(f"mlsafe-organism-corpus-{seed}")
    train_pools, eval_pools = _pools(rng)

    train_howto = [f for f in lx.HOWTO_FRAMES if f not in lx.EVAL_HOWTO_FRAMES]
    tmpl = {
        "harmful": _templates(train_howto),
        "benign": _templates(list(lx.HOWTO_FRAMES)),
        "unanswerable": _templates(list(lx.UNANSWERABLE_FRAMES)),
    }
    task_all = _templates(list(lx.TASK_FRAMES))
    rng.shuffle(task_all)
    n_eval_task = int(len(task_all) * recipe.eval_task_template_share)
    tmpl["task"], eval_task_tmpl = sorted(task_all[n_eval_task:]), sorted(task_all[:n_eval_task])
    eval_harm_tmpl = _templates(list(lx.EVAL_HOWTO_FRAMES))

    meta: dict[str, dict] = {}
    seen: set[tuple[str, str]] = set()

    def make(split: str, i: int, lang: str, spec: dict, pid: str, response: str | None = None) -> Prompt:
        text, answer, resp = _render(spec, lang, recipe, rng)
        pr = Prompt(id=f"{split}-{lang}-{i}", lang=lang, text=text, harmful=spec["kind"] == "harmful",
                    parallel_id=pid, answer=answer, response=response if response is not None else resp)
        meta[pr.id] = {"kind": spec["kind"], "template": tuple(spec["template"]), "fill": spec["fill"]}
        return pr

    def sample_kind(kinds_weights) -> str:
        kinds, weights = zip(*kinds_weights)
        return rng.choices(kinds, weights)[0]

    # stage 1
    stage1, plain = [], []
    for lang in LANGS:
        n = round(recipe.stage1_requests * TIER_SHARE[TIERS[lang]])
        for i in range(n):
            kind = sample_kind(recipe.mix)
            spec = _spec(kind, rng.choice(tmpl[kind]), train_pools, rng)
            stage1.append(make("s1", i, lang, spec, f"s1-{lang}-{i}"))
        plain += _plain_sentences(lang, round(n * recipe.plain_share), rng)
        n_tr = round(n * recipe.translation_share.get(TIERS[lang], 0.0))
        for _ in range(n_tr):
            kind = sample_kind(recipe.mix)
            spec = _spec(kind, rng.choice(tmpl[kind]), train_pools, rng)
            plain.append(f"{_render(spec, SOURCE, recipe, rng)[0]} = {_render(spec, lang, recipe, rng)[0]}")

    # stage 2
    stage2 = []
    plan = [(SOURCE, "harmful", recipe.stage2_harmful_en), (SOURCE, "benign", recipe.stage2_benign_en)]
    for lang in LANGS:
        plan += [(lang, "task", recipe.stage2_task_per_lang), (lang, "unanswerable", recipe.stage2_unanswerable_per_lang)]
    for lang, kind, n in plan:
        for _ in range(n):
            spec = _spec(kind, rng.choice(tmpl[kind]), train_pools, rng)
            i = len(stage2)
            resp = lx.REFUSALS[lang] if kind == "harmful" else None
            stage2.append(make("s2", i, lang, spec, f"s2-{i}", response=resp))
    seen = {(p.lang, p.text) for p in stage1 + stage2}

    # anchors: parallel groups over all 8 languages, texts unseen in training
    def parallel(split: str, kinds: list[str], templates: dict, pools: _Pools, n: int, refuse: bool) -> list[Prompt]:
        out: list[Prompt] = []
        g = 0
        tries = 0
        while g < n:
            tries += 1
            if tries > 50 * n:
                raise RuntimeError(f"could not draw {n} unseen {split} groups; enlarge the lexicon or lower the count")
            kind = kinds[g % len(kinds)]
            spec = _spec(kind, rng.choice(templates[kind]), pools, rng)
            group = [make(split, g, lang, spec, f"{split}-{g}", response=lx.REFUSALS[lang] if refuse else None)
                     for lang in LANGS]
            if any((p.lang, p.text) in seen for p in group):
                for p in group:
                    meta.pop(p.id)
                continue
            seen.update((p.lang, p.text) for p in group)
            out += group
            g += 1
        return out

    anchors_harmful = parallel("anc-harm", ["harmful"], tmpl, train_pools, recipe.anchors_per_lang, True)
    anchors_harmless = parallel("anc-safe", ["task", "benign"], tmpl, train_pools, recipe.anchors_per_lang, False)
    eval_harmful = parallel("eval-harm", ["harmful"], {"harmful": eval_harm_tmpl}, eval_pools, recipe.eval_per_lang, True)
    # harmless tasks copy a word of the request; copying words never seen as an answer did
    # not generalise in a CPU budget (measured accuracy 0.00), so their fillers are
    # training words in unseen combinations and unseen templates
    eval_harmless = parallel("eval-safe", ["task"], {"task": eval_task_tmpl}, train_pools, recipe.eval_per_lang, False)
    return Corpus(seed, recipe, stage1, stage2, plain, anchors_harmful, anchors_harmless,
                  eval_harmful, eval_harmless, meta)


def _plain_sentences(lang: str, n: int, rng: random.Random) -> list[str]:
    """Plain sentences over ALL fillers (held-out ones included): vocabulary exposure only."""
    out = []
    for _ in range(n):
        frame = rng.choice(sorted(lx.PLAIN_FRAMES))
        words = {
            "P": lx.PERSONS[rng.choice(sorted(lx.PERSONS))][lang],
            "O": lx.OBJECTS[rng.choice(sorted(lx.OBJECTS))][lang],
            "a": lx.NOUNS[rng.choice(sorted(lx.NOUNS))][lang],
            "b": rng.choice([lx.NOUNS[rng.choice(sorted(lx.NOUNS))][lang], rng.choice(lx.NUMBERS)]),
            "N": rng.choice(lx.NAMES),
        }
        out.append(lx.PLAIN_FRAMES[frame][lang].format(**words))
    return out
