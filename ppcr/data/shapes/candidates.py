"""Choose the sentences for each referable object of one scene, per dataset style.

Candidates are enumerated as structures and screened with cheap set arithmetic; every sentence
that is finally kept has been rendered to text, parsed back and evaluated with
``expressions.identifies`` — so the text itself, not the structure, is what is proven unique.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ppcr.data.shapes.expressions import (
    BINARY_RELATIONS,
    EXTREMES,
    Description,
    Expression,
    Located,
    NounPhrase,
    Ordinal,
    Related,
    closest,
    holds,
    identifies,
    located,
    ordinal,
    render,
)
from ppcr.data.shapes.scene import Scene, SceneObject

STYLES = ("located", "attributes", "relational")
SENTENCES_PER_REF = (1, 2, 3)
SENTENCES_PER_REF_WEIGHTS = (0.3, 0.4, 0.3)
LOCATED_SHARE = 0.8  # shapes: share of sentences that carry a location when one is available
NECESSARY_RELATION_SHARE = 0.8  # shapesg: prefer relations the target could not do without
SECOND_CLAUSE_PROBABILITY = 0.3  # shapesg: "... and below the green star"
RENDER_ATTEMPTS = 4  # surface forms tried per chosen structure to find a new sentence


def noun_phrases(obj: SceneObject) -> list[NounPhrase]:
    """Every noun phrase that is true of ``obj`` (the empty one included)."""
    phrases = []
    for size, colour, kind in itertools.product(
        (None, obj.size), (None, obj.colour), (None, "shape", "family")
    ):
        phrases.append(
            NounPhrase(
                size=size,
                colour=colour,
                shape=obj.shape if kind == "shape" else None,
                family=obj.family if kind == "family" else None,
            )
        )
    return phrases


class _SceneIndex:
    """Matching sets of every noun phrase in a scene, computed once."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.phrases: dict[SceneObject, list[NounPhrase]] = {o: noun_phrases(o) for o in scene.objects}
        self._matches: dict[NounPhrase, list[SceneObject]] = {}

    def matching(self, np_: NounPhrase) -> list[SceneObject]:
        if np_ not in self._matches:
            self._matches[np_] = [o for o in self.scene.objects if np_.matches(o)]
        return self._matches[np_]

    def unique_phrases(self, obj: SceneObject) -> list[NounPhrase]:
        return [p for p in self.phrases[obj] if not p.is_empty and len(self.matching(p)) == 1]


def _attribute_options(index: _SceneIndex, target: SceneObject) -> list[Expression]:
    return [Description(p) for p in index.unique_phrases(target)]


def _located_options(index: _SceneIndex, target: SceneObject) -> list[Expression]:
    scene, options = index.scene, []
    for np_ in index.phrases[target]:
        candidates = index.matching(np_)
        for where in EXTREMES + ("middle",):
            if located(candidates, where, scene) == {target.key}:
                options.append(Located(np_, where))
        for side in ("left", "right"):
            if ordinal(candidates, side, scene) == {target.key}:
                options.append(Ordinal(np_, side))
    return options


def _relational_options(index: _SceneIndex, target: SceneObject, rng: np.random.Generator):
    """(necessary, redundant) one-clause relational expressions that single out ``target``."""
    scene = index.scene
    necessary, redundant = [], []
    for landmark in scene.objects:
        if landmark is target:
            continue
        landmark_phrases = index.unique_phrases(landmark)
        if not landmark_phrases:
            continue
        landmark_np = landmark_phrases[int(rng.integers(len(landmark_phrases)))]
        related = {
            r: {o.key for o in scene.objects if o is not landmark and holds(r, o, landmark, scene)}
            for r in BINARY_RELATIONS
        }
        for np_ in index.phrases[target]:
            candidates = index.matching(np_)
            keys = {o.key for o in candidates}
            bucket = necessary if len(keys) > 1 else redundant
            for relation in BINARY_RELATIONS:
                if keys & related[relation] == {target.key}:
                    bucket.append(Related(np_, ((relation, landmark_np),)))
            others = [o for o in candidates if o is not landmark]
            if len(others) >= 2 and closest(candidates, landmark, scene) == {target.key}:
                bucket.append(Related(np_, (("closest_to", landmark_np),)))
    return necessary, redundant


def _with_second_clause(
    expression: Related, index: _SceneIndex, target: SceneObject, rng: np.random.Generator
) -> Related:
    """Add a second true relation to another landmark, making a longer (still unique) expression."""
    scene = index.scene
    first_landmarks = {o.key for o in index.matching(expression.clauses[0][1])}
    extra = []
    for landmark in scene.objects:
        if landmark is target or landmark.key in first_landmarks:
            continue
        phrases = index.unique_phrases(landmark)
        if not phrases:
            continue
        for relation in BINARY_RELATIONS:
            if holds(relation, target, landmark, scene):
                extra.append((relation, phrases[int(rng.integers(len(phrases)))]))
    if not extra:
        return expression
    return Related(expression.np, expression.clauses + (extra[int(rng.integers(len(extra)))],))


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def sentences_for_target(
    index: _SceneIndex, target: SceneObject, style: str, rng: np.random.Generator
) -> list[str]:
    """1-3 distinct sentences, each identifying exactly ``target``; [] if none exists."""
    if style == "attributes":
        pools: list[tuple[float, list[Expression]]] = [(1.0, _attribute_options(index, target))]
    elif style == "located":
        pools = [
            (LOCATED_SHARE, _located_options(index, target)),
            (1 - LOCATED_SHARE, _attribute_options(index, target)),
        ]
    elif style == "relational":
        necessary, redundant = _relational_options(index, target, rng)
        pools = [(NECESSARY_RELATION_SHARE, necessary), (1 - NECESSARY_RELATION_SHARE, redundant)]
    else:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    pools = [(w, options) for w, options in pools if options]
    if not pools:
        return []
    wanted = int(rng.choice(SENTENCES_PER_REF, p=SENTENCES_PER_REF_WEIGHTS))
    weights = np.array([w for w, _ in pools])
    sentences: list[str] = []
    for _ in range(wanted * RENDER_ATTEMPTS):
        if len(sentences) == wanted:
            break
        options = pools[int(rng.choice(len(pools), p=weights / weights.sum()))][1]
        expression = _pick(rng, options)
        if isinstance(expression, Related) and rng.random() < SECOND_CLAUSE_PROBABILITY:
            expression = _with_second_clause(expression, index, target, rng)
        sentence = " ".join(render(expression, rng))
        if sentence not in sentences and identifies(sentence, index.scene, target.key):
            sentences.append(sentence)
    return sentences


def sentences_for_scene(
    scene: Scene,
    style: str,
    rng: np.random.Generator,
    wanted: Callable[[SceneObject], bool] = lambda obj: True,
) -> dict[int, list[str]]:
    """Sentences per object key (draw order) for every ``wanted`` object that can be referred to."""
    index = _SceneIndex(scene)
    chosen = {}
    for target in scene.objects:
        if not wanted(target):
            continue
        sentences = sentences_for_target(index, target, style, rng)
        if sentences:
            chosen[target.key] = sentences
    return chosen
