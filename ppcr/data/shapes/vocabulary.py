"""The closed word list of Shapes-Ref: every word a generated expression can contain.

Kept in one module so the expression grammar (``expressions.py``), the scene attributes
(``scene.py``) and any tokenizer trained for Shapes-Ref agree on the same words.
"""

from __future__ import annotations

# Colour name -> base RGB. Every base has one channel <= 60 so no object pixel can ever equal a
# background pixel (backgrounds keep every channel >= 180); objects get a small per-object shade
# offset around the base so each object's pixels are an exact, unique colour in its image.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (232, 200, 30),
    "purple": (140, 55, 185),
    "orange": (240, 125, 25),
}

# Size classes, smallest first, with the half-extent as a fraction of the image's shorter side.
# The ranges are far apart so the class is visible at a glance.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.065, 0.08),
    "medium": (0.105, 0.125),
    "large": (0.15, 0.175),
}
# Words a sentence may use for a size class (the first one is the canonical name).
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium",),
    "large": ("large", "big"),
}

# Shape families: testA refers to round targets, testB to angular ones (like RefCOCO's
# people / non-people split).
FAMILIES: dict[str, tuple[str, ...]] = {
    "round": ("circle", "ellipse", "semicircle"),
    "angular": ("square", "rectangle", "triangle", "diamond", "hexagon", "star"),
}
SHAPE_TYPES: tuple[str, ...] = tuple(shape for shapes in FAMILIES.values() for shape in shapes)
FAMILY_OF: dict[str, str] = {shape: family for family, shapes in FAMILIES.items() for shape in shapes}
# Words a sentence may use for a shape type (the first one is the canonical name).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "ellipse": ("ellipse", "oval"),
    "semicircle": ("semicircle",),
    "square": ("square",),
    "rectangle": ("rectangle",),
    "triangle": ("triangle",),
    "diamond": ("diamond",),
    "hexagon": ("hexagon",),
    "star": ("star",),
}
# Adjectives naming a family, used when the shape type itself is not named ("the round red one").
FAMILY_WORDS: dict[str, tuple[str, ...]] = {"round": ("round",), "angular": ("angular",)}
# Nouns that name no shape type.
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object", "one")

# Location phrases of the ``shapes`` dataset (never in ``shapes+``). Keys are the selectors
# of expressions.py; values are the phrases (token tuples) that express them.
LOCATION_SUFFIXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "left": (("on", "the", "left"),),
    "right": (("on", "the", "right"),),
    "top": (("at", "the", "top"),),
    "bottom": (("at", "the", "bottom"),),
    "middle": (("in", "the", "middle"),),
}
LOCATION_PREFIXES: dict[str, tuple[str, ...]] = {
    "left": ("left", "leftmost"),
    "right": ("right", "rightmost"),
    "top": ("top", "topmost", "highest"),
    "bottom": ("bottom", "lowest"),
    "middle": ("middle",),
}
ORDINAL_WORDS: tuple[str, ...] = ("second",)
# "second ... from the left" / "from the right".
ORDINAL_SIDES: tuple[str, ...] = ("left", "right")
LOCATION_WORDS: frozenset[str] = frozenset(
    {w for phrases in LOCATION_SUFFIXES.values() for p in phrases for w in p[-1:]}
    | {w for words in LOCATION_PREFIXES.values() for w in words}
    | set(ORDINAL_WORDS)
    | set(ORDINAL_SIDES)
)

# Relations of the ``shapesg`` dataset: relation -> phrases (token tuples) that express it.
RELATION_PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "left_of": (("to", "the", "left", "of"), ("left", "of")),
    "right_of": (("to", "the", "right", "of"), ("right", "of")),
    "above": (("above",), ("over",)),
    "below": (("below",), ("under",), ("beneath",)),
    "next_to": (("next", "to"), ("beside",)),
    "closest_to": (("closest", "to"), ("nearest", "to")),
}
# The words that mark a relation (each relation phrase contains at least one of them).
RELATION_WORDS: frozenset[str] = frozenset(
    {"left", "right", "above", "over", "below", "under", "beneath", "next", "beside", "closest", "nearest"}
)
# Optional relative-clause openers ("the red circle that is above the blue square").
RELATIVE_OPENERS: tuple[tuple[str, ...], ...] = (("that", "is"), ("which", "is"))
ARTICLE = "the"
CONJUNCTION = "and"


def vocabulary() -> list[str]:
    """Every word any generated expression can contain, sorted."""
    words: set[str] = {ARTICLE, CONJUNCTION, "from"}
    words |= set(COLOURS)
    words |= {w for ws in SIZE_WORDS.values() for w in ws}
    words |= {w for ws in SHAPE_WORDS.values() for w in ws}
    words |= {w for ws in FAMILY_WORDS.values() for w in ws}
    words |= set(GENERIC_NOUNS)
    words |= {w for phrases in LOCATION_SUFFIXES.values() for p in phrases for w in p}
    words |= {w for ws in LOCATION_PREFIXES.values() for w in ws}
    words |= set(ORDINAL_WORDS) | set(ORDINAL_SIDES)
    words |= {w for phrases in RELATION_PHRASES.values() for p in phrases for w in p}
    words |= {w for p in RELATIVE_OPENERS for w in p}
    return sorted(words)
