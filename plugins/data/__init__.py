"""Synthetic data shared by the plugins' demos, tests and learning checks."""

from .shapes import (CAPTION_LEVELS, CLIP_MEAN, CLIP_STD, COLORS, OBJECT_CLASSES, PREDICATES, SHAPES, SIZES, VOCABULARY, Scene,
                     ShapeObject, ShapesWorld, images_to_tensor, relation_of, render)

__all__ = ["CAPTION_LEVELS", "CLIP_MEAN", "CLIP_STD", "COLORS", "OBJECT_CLASSES", "PREDICATES", "SHAPES", "SIZES", "VOCABULARY", "Scene",
           "ShapeObject", "ShapesWorld", "images_to_tensor", "relation_of", "render"]
