"""The predicate view of one image: its objects' attributes and visible boxes.

Expressions are evaluated against a ``Scene`` only, and a ``Scene`` can be rebuilt from a written
``instances.json`` (``scenes_from_coco``), so the uniqueness of every written sentence can be
checked from the files alone, without the generator's internal state.
"""

from __future__ import annotations

from dataclasses import dataclass

# Keys the generator adds to each COCO annotation (readers that do not know them ignore them).
ATTRIBUTES_KEY = "attributes"


@dataclass(frozen=True)
class SceneObject:
    """One object: ``key`` is its COCO annotation id; ``bbox`` its visible box [x, y, w, h]."""

    key: int
    shape: str
    family: str
    colour: str
    size: str
    bbox: tuple[float, float, float, float]

    @property
    def x0(self) -> float:
        return self.bbox[0]

    @property
    def y0(self) -> float:
        return self.bbox[1]

    @property
    def x1(self) -> float:
        return self.bbox[0] + self.bbox[2]

    @property
    def y1(self) -> float:
        return self.bbox[1] + self.bbox[3]

    @property
    def cx(self) -> float:
        return self.bbox[0] + self.bbox[2] / 2

    @property
    def cy(self) -> float:
        return self.bbox[1] + self.bbox[3] / 2


@dataclass(frozen=True)
class Scene:
    """An image's size and objects (in draw order)."""

    width: int
    height: int
    objects: tuple[SceneObject, ...]

    def object(self, key: int) -> SceneObject:
        for obj in self.objects:
            if obj.key == key:
                return obj
        raise KeyError(key)


def scenes_from_coco(instances: dict) -> dict[int, Scene]:
    """Rebuild every image's ``Scene`` from a Shapes-Ref ``instances.json`` (already parsed).

    Shape = category name, family = its supercategory, colour and size = the annotation's
    ``attributes``; objects keep the file's annotation order, which is the draw order.
    """
    categories = {c["id"]: c for c in instances["categories"]}
    by_image: dict[int, list[SceneObject]] = {img["id"]: [] for img in instances["images"]}
    for ann in instances["annotations"]:
        category = categories[ann["category_id"]]
        attributes = ann[ATTRIBUTES_KEY]
        by_image[ann["image_id"]].append(
            SceneObject(
                key=ann["id"],
                shape=category["name"],
                family=category["supercategory"],
                colour=attributes["colour"],
                size=attributes["size"],
                bbox=tuple(float(v) for v in ann["bbox"]),
            )
        )
    return {
        img["id"]: Scene(width=img["width"], height=img["height"], objects=tuple(by_image[img["id"]]))
        for img in instances["images"]
    }
