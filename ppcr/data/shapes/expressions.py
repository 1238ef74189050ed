"""The Shapes-Ref expression grammar: structures, their meaning on a scene, rendering and parsing.

An expression is a predicate over a ``Scene``: ``referents(expr, scene)`` is the set of objects it
can denote (the *possible* referents when a location is not clear-cut, so an unclear expression
denotes several objects, not a guessed one). The generator keeps a sentence only if
``sentence_referents(sentence, scene) == {target}``; the same function re-checks written files.
Parsing the sentence text (not a stored structure) is what makes that re-check honest.

Geometry uses each object's visible box. Margins are fractions of the image side so an
expression is only true when it is visibly true.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from ppcr.data.shapes.scene import Scene, SceneObject
from ppcr.data.shapes.vocabulary import (
    ARTICLE,
    COLOURS,
    CONJUNCTION,
    FAMILY_WORDS,
    GENERIC_NOUNS,
    LOCATION_PREFIXES,
    LOCATION_SUFFIXES,
    ORDINAL_SIDES,
    RELATION_PHRASES,
    RELATIVE_OPENERS,
    SHAPE_WORDS,
    SIZE_WORDS,
)

POSITION_MARGIN = 0.08  # of the image width (x) or height (y): "left of the rest" by this much
SIDE_LIMIT = 0.45  # a lone object "on the left" must have its centre in the left 45 %
CENTRE_BOX = 0.18  # a lone object "in the middle" is within this fraction of the image centre
NEXT_TO_GAP = 0.06  # of the shorter side: largest gap between two boxes that are "next to"
CLOSEST_MARGIN = 0.12  # of the shorter side: the closest must beat the runner-up by this much

EXTREMES = ("left", "right", "top", "bottom")
LOCATIONS = EXTREMES + ("middle",)
BINARY_RELATIONS = ("left_of", "right_of", "above", "below", "next_to")
RELATIONS = BINARY_RELATIONS + ("closest_to",)


class ExpressionSyntaxError(ValueError):
    """A sentence outside the Shapes-Ref grammar."""


# ----------------------------------------------------------------------------- structures


@dataclass(frozen=True)
class NounPhrase:
    """Attributes an object must have; None = not mentioned. ``family`` only without ``shape``."""

    size: str | None = None
    colour: str | None = None
    shape: str | None = None
    family: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.colour is None or obj.colour == self.colour)
            and (self.shape is None or obj.shape == self.shape)
            and (self.family is None or obj.family == self.family)
        )

    @property
    def is_empty(self) -> bool:
        return self.size is None and self.colour is None and self.shape is None and self.family is None


@dataclass(frozen=True)
class Description:
    """Attributes only: "the small red circle" (shapes+)."""

    np: NounPhrase


@dataclass(frozen=True)
class Located:
    """Attributes + an absolute location: "the red circle on the left" (shapes)."""

    np: NounPhrase
    where: str  # one of LOCATIONS


@dataclass(frozen=True)
class Ordinal:
    """Attributes + rank from a side: "the second red shape from the left" (shapes)."""

    np: NounPhrase
    side: str  # "left" | "right"


@dataclass(frozen=True)
class Related:
    """Attributes + relations to landmarks: "the red circle above the blue square" (shapesg)."""

    np: NounPhrase
    clauses: tuple[tuple[str, NounPhrase], ...] = field(default=())  # (relation, landmark)


Expression = Union[Description, Located, Ordinal, Related]


# ----------------------------------------------------------------------------- meaning


def _matching(np_: NounPhrase, scene: Scene) -> list[SceneObject]:
    return [obj for obj in scene.objects if np_.matches(obj)]


def _axis(where: str, scene: Scene) -> tuple[Callable[[SceneObject], float], float]:
    """Signed coordinate (smaller = closer to ``where``) and its margin."""
    if where == "left":
        return (lambda o: o.cx), POSITION_MARGIN * scene.width
    if where == "right":
        return (lambda o: -o.cx), POSITION_MARGIN * scene.width
    if where == "top":
        return (lambda o: o.cy), POSITION_MARGIN * scene.height
    if where == "bottom":
        return (lambda o: -o.cy), POSITION_MARGIN * scene.height
    raise ValueError(where)


def _possible_rank(
    candidates: list[SceneObject], coord: Callable[[SceneObject], float], margin: float, rank: int
) -> set[int]:
    """Objects that can be at 0-based ``rank`` along ``coord`` given the margin of doubt."""
    chosen = set()
    for obj in candidates:
        v = coord(obj)
        surely_before = sum(1 for o in candidates if coord(o) < v - margin)
        maybe_before = sum(1 for o in candidates if o is not obj and coord(o) <= v + margin)
        if surely_before <= rank <= maybe_before:
            chosen.add(obj.key)
    return chosen


def _lone_at(obj: SceneObject, where: str, scene: Scene) -> bool:
    w, h = scene.width, scene.height
    if where == "left":
        return obj.cx <= SIDE_LIMIT * w
    if where == "right":
        return obj.cx >= (1 - SIDE_LIMIT) * w
    if where == "top":
        return obj.cy <= SIDE_LIMIT * h
    if where == "bottom":
        return obj.cy >= (1 - SIDE_LIMIT) * h
    return abs(obj.cx - w / 2) <= CENTRE_BOX * w and abs(obj.cy - h / 2) <= CENTRE_BOX * h


def located(candidates: list[SceneObject], where: str, scene: Scene) -> set[int]:
    """Objects among ``candidates`` that can be "the one on the <where>"."""
    if len(candidates) == 1:
        return {candidates[0].key} if _lone_at(candidates[0], where, scene) else set()
    if where == "middle":  # horizontal middle of an odd number (>= 3) of candidates
        if len(candidates) % 2 == 0:
            return set()
        coord, margin = _axis("left", scene)
        return _possible_rank(candidates, coord, margin, len(candidates) // 2)
    coord, margin = _axis(where, scene)
    return _possible_rank(candidates, coord, margin, 0)


def ordinal(candidates: list[SceneObject], side: str, scene: Scene) -> set[int]:
    """Objects that can be second from ``side`` (needs at least three candidates)."""
    if len(candidates) < 3:
        return set()
    coord, margin = _axis(side, scene)
    return _possible_rank(candidates, coord, margin, 1)


def _box_gap(a: SceneObject, b: SceneObject) -> float:
    dx = max(0.0, b.x0 - a.x1, a.x0 - b.x1)
    dy = max(0.0, b.y0 - a.y1, a.y0 - b.y1)
    return math.hypot(dx, dy)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def holds(relation: str, obj: SceneObject, landmark: SceneObject, scene: Scene) -> bool:
    """A binary relation between two distinct objects, from their visible boxes.

    Left/right/above/below mean *directly* so: the boxes share some rows (or columns), and each
    centre lies beyond the other box's near edge.
    """
    if relation == "left_of":  # beside it on the left: centres past each other's edges, rows overlap
        rows_overlap = _overlap(obj.y0, obj.y1, landmark.y0, landmark.y1)
        return obj.cx < landmark.x0 and landmark.cx > obj.x1 and rows_overlap
    if relation == "right_of":
        return holds("left_of", landmark, obj, scene)
    if relation == "above":  # directly above: columns overlap
        columns_overlap = _overlap(obj.x0, obj.x1, landmark.x0, landmark.x1)
        return obj.cy < landmark.y0 and landmark.cy > obj.y1 and columns_overlap
    if relation == "below":
        return holds("above", landmark, obj, scene)
    if relation == "next_to":
        return _box_gap(obj, landmark) <= NEXT_TO_GAP * min(scene.width, scene.height)
    raise ValueError(f"not a binary relation: {relation!r}")


def closest(candidates: list[SceneObject], landmark: SceneObject, scene: Scene) -> set[int]:
    """Candidates that can be the closest to ``landmark`` (centre distance, with a margin)."""
    others = [o for o in candidates if o.key != landmark.key]
    if not others:
        return set()
    distance = {o.key: math.hypot(o.cx - landmark.cx, o.cy - landmark.cy) for o in others}
    best = min(distance.values())
    margin = CLOSEST_MARGIN * min(scene.width, scene.height)
    return {key for key, d in distance.items() if d <= best + margin}


def referents(expression: Expression, scene: Scene) -> frozenset[int]:
    """Keys of every object the expression can denote in ``scene``."""
    candidates = _matching(expression.np, scene)
    if isinstance(expression, Description):
        return frozenset(o.key for o in candidates)
    if isinstance(expression, Located):
        return frozenset(located(candidates, expression.where, scene))
    if isinstance(expression, Ordinal):
        return frozenset(ordinal(candidates, expression.side, scene))
    if isinstance(expression, Related):
        for relation, landmark_np in expression.clauses:
            landmarks = _matching(landmark_np, scene)
            if len(landmarks) != 1:  # "the <landmark>" must itself be unambiguous
                return frozenset()
            landmark = landmarks[0]
            if relation == "closest_to":
                keep = closest(candidates, landmark, scene)
                candidates = [o for o in candidates if o.key in keep]
            else:
                candidates = [
                    o for o in candidates if o.key != landmark.key and holds(relation, o, landmark, scene)
                ]
        return frozenset(o.key for o in candidates)
    raise TypeError(f"not an expression: {expression!r}")


def sentence_referents(sentence: str, scene: Scene) -> frozenset[int]:
    """Parse a (normalised or raw) sentence and return the keys it can denote in ``scene``."""
    return referents(parse(sentence), scene)


def identifies(sentence: str, scene: Scene, target: int) -> bool:
    """True iff the sentence denotes exactly the object ``target`` and nothing else."""
    try:
        return sentence_referents(sentence, scene) == {target}
    except ExpressionSyntaxError:
        return False


# ----------------------------------------------------------------------------- text


def normalise(raw: str) -> str:
    """The ``sent`` form of a ``raw`` sentence: lowercase, no end punctuation, single spaces."""
    return " ".join(raw.lower().strip().rstrip(".!").split())


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def render_noun_phrase(np_: NounPhrase, rng: np.random.Generator) -> list[str]:
    """Words for a noun phrase in English adjective order: size, family, colour, noun."""
    words: list[str] = []
    if np_.size is not None:
        words.append(_pick(rng, SIZE_WORDS[np_.size]))
    if np_.family is not None:
        words.append(_pick(rng, FAMILY_WORDS[np_.family]))
    if np_.colour is not None:
        words.append(np_.colour)
    if np_.shape is not None:
        words.append(_pick(rng, SHAPE_WORDS[np_.shape]))
    else:
        nouns = GENERIC_NOUNS if words else tuple(n for n in GENERIC_NOUNS if n != "one")
        words.append(_pick(rng, nouns))
    return words


def render(expression: Expression, rng: np.random.Generator) -> list[str]:
    """One surface form (tokens) of an expression; ``parse`` maps every form back to it."""
    article = [ARTICLE] if rng.random() < 0.7 else []
    np_words = render_noun_phrase(expression.np, rng)
    if isinstance(expression, Description):
        return article + np_words
    if isinstance(expression, Located):
        if rng.random() < 0.5:
            return article + np_words + list(_pick(rng, LOCATION_SUFFIXES[expression.where]))
        return article + [_pick(rng, LOCATION_PREFIXES[expression.where])] + np_words
    if isinstance(expression, Ordinal):
        if rng.random() < 0.5:
            return [ARTICLE, "second"] + np_words + ["from", ARTICLE, expression.side]
        return [ARTICLE] + np_words + ["second", "from", ARTICLE, expression.side]
    if isinstance(expression, Related):
        words = article + np_words
        for index, (relation, landmark) in enumerate(expression.clauses):
            if index > 0:
                words.append(CONJUNCTION)
            if rng.random() < 0.3:
                words += list(_pick(rng, RELATIVE_OPENERS))
            words += list(_pick(rng, RELATION_PHRASES[relation]))
            words += [ARTICLE] + render_noun_phrase(landmark, rng)
        return words
    raise TypeError(f"not an expression: {expression!r}")


def _word_table(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {word: key for key, words in table.items() for word in words}


_SIZE_OF = _word_table(SIZE_WORDS)
_SHAPE_OF = _word_table(SHAPE_WORDS)
_FAMILY_OF_WORD = _word_table(FAMILY_WORDS)
_PREFIX_OF = _word_table(LOCATION_PREFIXES)
_SUFFIX_OF = {phrase: where for where, phrases in LOCATION_SUFFIXES.items() for phrase in phrases}
# Longest phrases first so "to the left of" wins over a shorter prefix of it.
_RELATION_OF = sorted(
    ((phrase, relation) for relation, phrases in RELATION_PHRASES.items() for phrase in phrases),
    key=lambda item: -len(item[0]),
)


class _Tokens:
    def __init__(self, words: list[str], sentence: str):
        self.words, self.at, self.sentence = words, 0, sentence

    def peek(self) -> str | None:
        return self.words[self.at] if self.at < len(self.words) else None

    def starts(self, phrase: tuple[str, ...]) -> bool:
        return tuple(self.words[self.at : self.at + len(phrase)]) == phrase

    def take(self, phrase: tuple[str, ...]) -> bool:
        if self.starts(phrase):
            self.at += len(phrase)
            return True
        return False

    def done(self) -> bool:
        return self.at >= len(self.words)

    def fail(self, why: str) -> ExpressionSyntaxError:
        return ExpressionSyntaxError(f"{why} at word {self.at + 1} of {self.sentence!r}")


def _parse_noun_phrase(tokens: _Tokens) -> NounPhrase:
    found: dict[str, str] = {}
    while True:
        word = tokens.peek()
        if word is None:
            raise tokens.fail("expected a noun")
        for slot, table in (("size", _SIZE_OF), ("family", _FAMILY_OF_WORD), ("colour", COLOURS)):
            if word in table:
                if slot in found:
                    raise tokens.fail(f"second {slot} word")
                found[slot] = table[word] if slot != "colour" else word
                tokens.at += 1
                break
        else:
            tokens.at += 1
            if word in _SHAPE_OF:
                if "family" in found:
                    raise tokens.fail("family word together with a shape")
                return NounPhrase(shape=_SHAPE_OF[word], **found)
            if word in GENERIC_NOUNS:
                return NounPhrase(**found)
            tokens.at -= 1
            raise tokens.fail(f"unexpected word {word!r}")


def _parse_relation(tokens: _Tokens) -> str:
    for opener in RELATIVE_OPENERS:
        if tokens.take(opener):
            break
    for phrase, relation in _RELATION_OF:
        if tokens.take(phrase):
            return relation
    raise tokens.fail("expected a relation")


def parse(sentence: str) -> Expression:
    """The expression a sentence (raw or normalised) states; ExpressionSyntaxError if none."""
    tokens = _Tokens(normalise(sentence).split(), sentence)
    tokens.take((ARTICLE,))
    prefix = tokens.peek()
    if prefix == "second":
        tokens.at += 1
        np_ = _parse_noun_phrase(tokens)
        side = _parse_from_side(tokens)
        expression: Expression = Ordinal(np_, side)
    elif prefix in _PREFIX_OF:
        tokens.at += 1
        expression = Located(_parse_noun_phrase(tokens), _PREFIX_OF[prefix])
    else:
        np_ = _parse_noun_phrase(tokens)
        if tokens.done():
            expression = Description(np_)
        elif tokens.take(("second",)):
            expression = Ordinal(np_, _parse_from_side(tokens))
        elif tuple(tokens.words[tokens.at :]) in _SUFFIX_OF:
            expression = Located(np_, _SUFFIX_OF[tuple(tokens.words[tokens.at :])])
            tokens.at = len(tokens.words)
        else:
            clauses = []
            while True:
                relation = _parse_relation(tokens)
                if not tokens.take((ARTICLE,)):
                    raise tokens.fail("expected 'the' before a landmark")
                clauses.append((relation, _parse_noun_phrase(tokens)))
                if not tokens.take((CONJUNCTION,)):
                    break
            expression = Related(np_, tuple(clauses))
    if not tokens.done():
        raise tokens.fail("unexpected trailing words")
    return expression


def _parse_from_side(tokens: _Tokens) -> str:
    for side in ORDINAL_SIDES:
        if tokens.take(("from", ARTICLE, side)):
            return side
    raise tokens.fail("expected 'from the left' or 'from the right'")


def typed_form(sent: str, rng: np.random.Generator) -> str:
    """A ``raw`` version of ``sent`` as a person might type it; ``normalise`` undoes it."""
    style = rng.choice(5, p=(0.45, 0.25, 0.15, 0.1, 0.05))
    if style == 1:
        return sent[:1].upper() + sent[1:]
    if style == 2:
        return sent[:1].upper() + sent[1:] + "."
    if style == 3:
        return sent.upper()
    if style == 4:
        return sent.replace(" ", "  ", 1) + " "
    return sent
