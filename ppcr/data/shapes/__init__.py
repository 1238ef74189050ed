"""Shapes-Ref: PPCR's synthetic referring-segmentation benchmark, written in the refer layout.

``generate_shapes_ref(out, seed, images, progress)`` writes ``shapes`` (attributes + location),
``shapes+`` (attributes only) and ``shapesg`` (relations between several objects), sharing one
image pool under ``<out>/images/shapes``. ``identifies(sentence, scene, ann_id)`` with
``scenes_from_coco(instances)`` re-checks from the written files that a sentence denotes exactly
its object.
"""

from ppcr.data.shapes.expressions import (
    ExpressionSyntaxError,
    identifies,
    normalise,
    parse,
    sentence_referents,
)
from ppcr.data.shapes.scene import Scene, SceneObject, scenes_from_coco
from ppcr.data.shapes.vocabulary import vocabulary
from ppcr.data.shapes.writer import DEFAULT_IMAGES, MIN_IMAGES, ShapesSummary, generate_shapes_ref

__all__ = [
    "DEFAULT_IMAGES",
    "MIN_IMAGES",
    "ExpressionSyntaxError",
    "Scene",
    "SceneObject",
    "ShapesSummary",
    "generate_shapes_ref",
    "identifies",
    "normalise",
    "parse",
    "scenes_from_coco",
    "sentence_referents",
    "vocabulary",
]
