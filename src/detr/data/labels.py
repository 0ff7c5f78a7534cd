"""Matching a model's classes to a dataset's categories: by category id, else by name, else a clear refusal.

A model knows its classes by name (``class_names``) and, when it has them, by the category ids
they stand for (``category_ids``: the published COCO models' class index is the COCO category
id; a model trained here keeps its dataset's ids). A dataset declares categories as (id, name).
They match by id when every category's id is one of the model's with the same name (a dataset
in the model's own label space: COCO data for a COCO model); else by name when every category's
name is one of the model's (a re-export or a merge that renumbered the ids); otherwise the
model cannot predict that dataset's classes, and saying so beats labelling boxes with the
wrong names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def _key(name: str) -> str:
    return name.strip().casefold()


@dataclass
class CategoryMatch:
    """How a dataset's categories map onto a model's classes.

    class_of: dataset class id (its categories sorted by id, from 0) -> model class id.
    category_of: model class id -> dataset category id, None for classes the dataset lacks.
    by: ``"id"``, ``"name"``, or ``"order"`` (a model without class names).
    """

    class_of: list[int]
    category_of: list[int | None]
    by: str

    def describe(self) -> str:
        used = sum(c is not None for c in self.category_of)
        return f"{used} of the model's {len(self.category_of)} classes matched to the dataset's categories by {self.by}"


def match_categories(
    num_classes: int,
    class_names: Sequence[str] | None,
    category_ids: Sequence[int] | None,
    categories: Sequence[tuple[int, str]],
    source: str = "the dataset",
) -> CategoryMatch:
    """Map ``categories`` ((id, name) sorted by id) onto a model's ``num_classes`` classes (see the module
    docstring). A model without class names matches only a dataset of as many categories, in order.
    Raises ``ValueError`` naming the categories the model does not have.
    """
    if class_names is None:
        if len(categories) != num_classes:
            raise ValueError(
                f"{source} declares {len(categories)} categories, the model has {num_classes} classes and no class "
                "names to match them by: give the model its class_names"
            )
        return _match(list(range(num_classes)), num_classes, categories, "order")
    if category_ids is not None:
        index = {cid: i for i, cid in enumerate(category_ids)}
        if all(cid in index and _key(class_names[index[cid]]) == _key(name) for cid, name in categories):
            return _match([index[cid] for cid, _ in categories], num_classes, categories, "id")
    by_name: dict[str, int] = {}
    for i, name in enumerate(class_names):
        by_name.setdefault(_key(name), i)
    missing = [name for _, name in categories if _key(name) not in by_name]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        known = ", ".join(repr(n) for n in class_names[:10]) + (", ..." if len(class_names) > 10 else "")
        raise ValueError(
            f"{source} has categories the model does not know, by id or by name: {shown} (the model's classes: "
            f"{known}). Evaluate a model trained on these categories, or fine-tune this one on them "
            "(detr train --weights ...)"
        )
    return _match([by_name[_key(name)] for _, name in categories], num_classes, categories, "name")


def _match(class_of: list[int], num_classes: int, categories: Sequence[tuple[int, str]], by: str) -> CategoryMatch:
    category_of: list[int | None] = [None] * num_classes
    for (cid, _), cls in zip(categories, class_of):
        category_of[cls] = cid
    return CategoryMatch(class_of, category_of, by)
