"""Deterministic synthetic "shapes world" (PIL): the shared test and demo data of every plugin.

A scene is a few coloured shapes on a plain background. From one scene the generator derives:

* captions at increasing levels of detail (:data:`CAPTION_LEVELS`):
  0 ``"a shape"`` < 1 ``"a circle"`` < 2 ``"a red circle"`` < 3 ``"a small red circle"``
  < 4 ``"a small red circle left of a blue square"``;
* a scene graph: object boxes and labels, and pairwise relations whose predicates follow a long-tailed
  (Zipf) distribution, each predicate a deterministic function of the two boxes (:func:`relation_of`);
* prompt-image pairs with graded alignment: a prompt names ``n`` attributes and the image satisfies ``k``
  of them; the score is ``k / n`` (:func:`alignment_pair`).

Everything is driven by ``numpy.random.Generator`` seeds, so the same seed gives bit-identical images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
SIZES = {"small": 0.16, "large": 0.32}  # side length as a fraction of the image size
BACKGROUND = (245, 245, 245)
# Predicates ordered from most to least frequent (index 0 of PREDICATES is the SGG background class).
PREDICATES = ("__background__", "left of", "above", "right of", "below", "near", "overlapping", "inside")
PREDICATE_FREQ = np.array([0.30, 0.22, 0.16, 0.12, 0.09, 0.07, 0.04])  # Zipf-like long tail
# Object classes for scene graphs: colour x shape, with 0 = background as in SGG datasets.
OBJECT_CLASSES = ("__background__",) + tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
CAPTION_LEVELS = (0, 1, 2, 3, 4)
VOCABULARY = ("a", "an", "shape", "of", "left", "right", "above", "below", "near", "overlapping", "inside",
              "picture", ".", *SHAPES, *COLORS, *SIZES)


@dataclass(frozen=True)
class ShapeObject:
    """One object: attributes and its box ``(x1, y1, x2, y2)`` in pixels."""

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]

    @property
    def label(self) -> int:
        """Object class id in :data:`OBJECT_CLASSES` (1-based; 0 is background)."""
        return OBJECT_CLASSES.index(f"{self.color} {self.shape}")

    @property
    def center(self) -> tuple[float, float]:
        """Box centre ``(x, y)`` in pixels."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    def phrase(self, level: int) -> str:
        """Noun phrase at caption level ``level`` (1: shape, 2: +colour, 3+: +size)."""
        words = [self.shape]
        if level >= 2:
            words.insert(0, self.color)
        if level >= 3:
            words.insert(0, self.size)
        return "a " + " ".join(words)


@dataclass
class Scene:
    """Objects in an ``image_size`` x ``image_size`` image plus annotated relations ``(subj, obj, predicate)``."""

    objects: list[ShapeObject]
    image_size: int
    relations: list[tuple[int, int, int]] = field(default_factory=list)


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject) -> None:
    x1, y1, x2, y2 = obj.box
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([x1, y1, x2, y2], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x1, y1, x2, y2], fill=fill)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)


def render(scene: Scene) -> Image.Image:
    """RGB image of ``scene`` (objects drawn in order, later ones on top)."""
    img = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw(draw, obj)
    return img


def relation_of(subj: ShapeObject, obj: ShapeObject, image_size: int) -> int:
    """Predicate id (in :data:`PREDICATES`) that the geometry of two boxes determines.

    Rules, first match wins: subject box inside object box -> ``inside``; boxes intersect -> ``overlapping``;
    centre distance below 30% of the image -> ``near``; otherwise the dominant direction of the centre offset
    (``left of`` / ``right of`` / ``above`` / ``below``).
    """
    ax1, ay1, ax2, ay2 = subj.box
    bx1, by1, bx2, by2 = obj.box
    if ax1 >= bx1 and ay1 >= by1 and ax2 <= bx2 and ay2 <= by2:
        return PREDICATES.index("inside")
    if ax1 < bx2 and bx1 < ax2 and ay1 < by2 and by1 < ay2:
        return PREDICATES.index("overlapping")
    (cx, cy), (ox, oy) = subj.center, obj.center
    dx, dy = ox - cx, oy - cy
    if (dx * dx + dy * dy) ** 0.5 < 0.3 * image_size:
        return PREDICATES.index("near")
    if abs(dx) >= abs(dy):
        return PREDICATES.index("left of" if dx > 0 else "right of")
    return PREDICATES.index("above" if dy > 0 else "below")


class ShapesWorld:
    """Generator of scenes, captions, scene graphs and alignment pairs.

    Args:
        image_size: side of the square images in pixels.
        seed: base seed; item ``i`` of any stream uses ``(seed, stream, i)``, so items are independent of order.
    """

    def __init__(self, image_size: int = 32, seed: int = 0):
        if image_size < 16:
            raise ValueError(f"image_size: expected >= 16 pixels, got {image_size}")
        self.image_size = image_size
        self.seed = seed

    def rng(self, stream: int, index: int) -> np.random.Generator:
        """Independent generator for item ``index`` of stream ``stream``."""
        return np.random.default_rng([self.seed, stream, index])

    # -- objects ------------------------------------------------------------------------------------
    def _random_object(self, rng: np.random.Generator, size: Optional[str] = None, **attrs) -> ShapeObject:
        size = size or rng.choice(list(SIZES))
        side = SIZES[size] * self.image_size
        x1 = rng.uniform(0, self.image_size - side)
        y1 = rng.uniform(0, self.image_size - side)
        return ShapeObject(shape=attrs.get("shape") or str(rng.choice(SHAPES)),
                           color=attrs.get("color") or str(rng.choice(list(COLORS))),
                           size=str(size), box=(x1, y1, x1 + side, y1 + side))

    def _place_pair(self, rng: np.random.Generator, predicate: int, a: Optional[ShapeObject] = None,
                    b: Optional[ShapeObject] = None, tries: int = 200) -> tuple[ShapeObject, ShapeObject]:
        """Two objects (optionally with fixed attributes) whose geometry gives ``predicate``."""
        for _ in range(tries):
            size_a = "small" if PREDICATES[predicate] == "inside" else None
            size_b = "large" if PREDICATES[predicate] == "inside" else None
            sa = self._random_object(rng, size=size_a or (a.size if a else None),
                                     shape=a.shape if a else None, color=a.color if a else None)
            sb = self._random_object(rng, size=size_b or (b.size if b else None),
                                     shape=b.shape if b else None, color=b.color if b else None)
            if PREDICATES[predicate] == "inside":
                bx1, by1, bx2, by2 = sb.box
                side = sa.box[2] - sa.box[0]
                x1 = rng.uniform(bx1, bx2 - side)
                y1 = rng.uniform(by1, by2 - side)
                sa = replace(sa, box=(x1, y1, x1 + side, y1 + side))
            if relation_of(sa, sb, self.image_size) == predicate:
                return sa, sb
        raise RuntimeError(f"could not place a pair for predicate {PREDICATES[predicate]!r}")

    # -- streams --------------------------------------------------------------------------------------
    def _place_relative(self, rng: np.random.Generator, anchor: ShapeObject, predicate: int,
                        tries: int = 200) -> Optional[ShapeObject]:
        """A new object ``s`` with ``relation_of(s, anchor) == predicate``, or ``None`` if none was found."""
        for _ in range(tries):
            cand = self._random_object(rng, size="small" if PREDICATES[predicate] == "inside" else None)
            if PREDICATES[predicate] == "inside":
                side = cand.box[2] - cand.box[0]
                ax1, ay1, ax2, ay2 = anchor.box
                if ax2 - ax1 <= side or ay2 - ay1 <= side:  # float boxes: width and height may differ by rounding
                    return None
                x1, y1 = rng.uniform(ax1, ax2 - side), rng.uniform(ay1, ay2 - side)
                cand = replace(cand, box=(x1, y1, x1 + side, y1 + side))
            if relation_of(cand, anchor, self.image_size) == predicate:
                return cand
        return None

    def _long_tail_predicate(self, rng: np.random.Generator) -> int:
        return 1 + int(rng.choice(len(PREDICATE_FREQ), p=PREDICATE_FREQ))

    def scene(self, index: int, num_objects: int = 2) -> Scene:
        """Scene ``index`` with ``num_objects`` objects and ``num_objects - 1`` annotated relations.

        Object 0 is the anchor; every further object ``j`` is placed so that ``(j, 0)`` has a predicate drawn
        from the long tail (the first pair is annotated as ``(0, 1)``). As in Visual Genome, annotation is
        sparse: pairs among the other objects are not annotated.
        """
        if num_objects < 2:
            raise ValueError(f"num_objects: expected >= 2, got {num_objects}")
        rng = self.rng(1, index)
        pred = self._long_tail_predicate(rng)
        a, b = self._place_pair(rng, pred)
        objects, relations = [a, b], [(0, 1, pred)]
        while len(objects) < num_objects:
            p = self._long_tail_predicate(rng)
            new = self._place_relative(rng, a, p)
            if new is not None:
                relations.append((len(objects), 0, p))
                objects.append(new)
        return Scene(objects=objects, image_size=self.image_size, relations=relations)

    def caption(self, scene: Scene, level: int) -> str:
        """Caption of ``scene`` at detail ``level`` in :data:`CAPTION_LEVELS` (about its first object)."""
        if level not in CAPTION_LEVELS:
            raise ValueError(f"level: expected one of {CAPTION_LEVELS}, got {level}")
        if level == 0:
            return "a shape"
        first = scene.objects[0]
        if level < 4:
            return first.phrase(level)
        s, o, p = scene.relations[0]
        return f"{scene.objects[s].phrase(3)} {PREDICATES[p]} {scene.objects[o].phrase(2)}"

    def captions(self, scene: Scene) -> list[tuple[int, str]]:
        """All ``(level, caption)`` pairs of ``scene``, coarsest first."""
        return [(lvl, self.caption(scene, lvl)) for lvl in CAPTION_LEVELS]

    def scene_graph(self, index: int, num_objects: int = 3) -> tuple[Image.Image, dict]:
        """Image and ground truth ``{"boxes": (N,4) xyxy float32, "labels": (N,), "relations": (M,3)}``."""
        scene = self.scene(index, num_objects=num_objects)
        gt = {
            "boxes": np.array([o.box for o in scene.objects], dtype=np.float32),
            "labels": np.array([o.label for o in scene.objects], dtype=np.int64),
            "relations": np.array(scene.relations, dtype=np.int64).reshape(-1, 3),
        }
        return render(scene), gt

    def alignment_pair(self, index: int, num_prompts: int = 64) -> dict:
        """Prompt-image pair with a graded alignment score.

        The prompt (one of ``num_prompts`` fixed prompts, id ``index % num_prompts``) names ``n = 5`` attributes:
        size, colour and shape of the subject, the relation, and the colour of the object. The image keeps
        ``k`` of them (``k`` uniform in 0..5) and changes the others, so ``score = k / n``.

        Returns:
            ``{"image": PIL.Image, "prompt": str, "prompt_id": int, "score": float, "k": int, "n": int}``.
        """
        prompt_id = index % num_prompts
        prng = self.rng(2, prompt_id)
        pred = 1 + int(prng.choice(4))  # directional predicates keep every attribute changeable
        a, b = self._place_pair(prng, pred)
        prompt = f"{a.phrase(3)} {PREDICATES[pred]} {b.phrase(2)}"
        rng = self.rng(3, index)
        k = int(rng.integers(0, 6))
        keep = set(rng.choice(5, size=k, replace=False).tolist())

        def other(options: Sequence[str], current: str) -> str:
            return str(rng.choice([o for o in options if o != current]))

        size = a.size if 0 in keep else other(list(SIZES), a.size)
        color = a.color if 1 in keep else other(list(COLORS), a.color)
        shape = a.shape if 2 in keep else other(SHAPES, a.shape)
        rel = pred if 3 in keep else int(rng.choice([p for p in range(1, 5) if p != pred]))
        ocolor = b.color if 4 in keep else other(list(COLORS), b.color)
        sa, sb = self._place_pair(rng, rel, ShapeObject(shape, color, size, a.box),
                                  ShapeObject(b.shape, ocolor, b.size, b.box))
        image = render(Scene(objects=[sa, sb], image_size=self.image_size))
        return {"image": image, "prompt": prompt, "prompt_id": prompt_id, "score": k / 5.0, "k": k, "n": 5}


# OpenAI CLIP's image normalisation (what its processors and open_clip use); pass to images_to_tensor for CLIP towers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def images_to_tensor(images: Sequence[Image.Image], mean: Sequence[float] = (0.5, 0.5, 0.5),
                     std: Sequence[float] = (0.5, 0.5, 0.5)):
    """Stack PIL images into a normalised float32 tensor ``(batch, 3, H, W)``."""
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    t = torch.from_numpy(arr).permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (t - m) / s
