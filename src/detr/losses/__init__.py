"""DETR's set loss: Hungarian matching (:mod:`.matcher`) and the criterion over matched pairs (:mod:`.criterion`)."""

from .criterion import SetCriterion
from .matcher import HungarianMatcher

__all__ = ["HungarianMatcher", "SetCriterion"]
