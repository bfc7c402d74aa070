"""Scene-graph data: the VG-150 split files reader and the synthetic long-tailed shapes-world set.

VG-150 (Xu et al. 2017) ships as ``VG-SGG-with-attri.h5`` (boxes, labels, relations, split), ``VG-SGG-dicts.json``
(``label_to_idx``, ``predicate_to_idx``, ``attribute_to_idx``) and ``image_data.json`` (one entry per image with
``image_id``, ``width``, ``height``). :class:`VG150Dataset` reproduces the split and filtering of
Scene-Graph-Benchmark.pytorch's ``VGDataset`` / ``load_graphs``:

* ``split == 0`` is train (its first ``num_val_im`` kept images are val), ``split == 2`` is test;
* images without boxes are dropped, and without relations too when ``filter_empty_rels``;
* ``boxes_1024`` (cx, cy, w, h at longest side 1024) become xyxy and are rescaled by ``max(W, H) / 1024``;
* relation box indices are global in the h5 and are made local by subtracting ``img_to_first_box``;
* train only: ``filter_duplicate_rels`` samples one predicate per ordered pair, ``filter_non_overlap`` keeps only
  relations whose boxes overlap (images with none are dropped);
* the 4 corrupted images (1592, 1722, 4616, 4617.jpg) are removed from ``image_data.json``, whose remaining entries
  are aligned row by row with the h5 images.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .evaluation import box_iou

BOX_SCALE = 1024
CORRUPTED_IMAGES = ("1592.jpg", "1722.jpg", "4616.jpg", "4617.jpg")
SPLITS = ("train", "val", "test")


def load_vg_info(dict_file: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """``(ind_to_classes, ind_to_predicates, ind_to_attributes)`` with ``__background__`` at index 0."""
    with open(dict_file, encoding="utf-8") as f:
        info = json.load(f)
    out = []
    for key in ("label_to_idx", "predicate_to_idx", "attribute_to_idx"):
        mapping = dict(info.get(key, {}))
        if key != "attribute_to_idx" and not mapping:
            raise ValueError(f"dict_file: {dict_file} has no {key!r} mapping")
        mapping["__background__"] = 0
        out.append(sorted(mapping, key=lambda k: mapping[k]))
    return out[0], out[1], out[2]


def load_vg_graphs(roidb_file: str | os.PathLike, split: str, num_im: int = -1, num_val_im: int = 5000,
                   filter_empty_rels: bool = True, filter_non_overlap: bool = False):
    """Per-image boxes (xyxy at scale 1024), classes, attributes and relations of ``split`` (see module doc).

    Returns:
        ``(split_mask (num_h5_images,) bool, boxes list of (N,4) float32, classes list of (N,), attributes list of
        (N, A), relations list of (M, 3) [subj, obj, predicate])``.
    """
    import h5py

    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if filter_non_overlap and split != "train":
        raise ValueError(f"filter_non_overlap: only valid for the train split, got split={split!r}")
    with h5py.File(roidb_file, "r") as h5:
        data_split = h5["split"][:]
        split_mask = data_split == (2 if split == "test" else 0)
        split_mask &= h5["img_to_first_box"][:] >= 0
        if filter_empty_rels:
            split_mask &= h5["img_to_first_rel"][:] >= 0
        image_index = np.where(split_mask)[0]
        if num_im > -1:
            image_index = image_index[:num_im]
        if num_val_im > 0:
            if split == "val":
                image_index = image_index[:num_val_im]
            elif split == "train":
                image_index = image_index[num_val_im:]
        split_mask = np.zeros_like(data_split).astype(bool)
        split_mask[image_index] = True

        all_labels = h5["labels"][:, 0]
        all_attributes = h5["attributes"][:, :] if "attributes" in h5 else np.zeros((len(all_labels), 0), np.int64)
        all_boxes = h5[f"boxes_{BOX_SCALE}"][:].astype(np.float32)  # cx, cy, w, h
        if not (np.all(all_boxes[:, :2] >= 0) and np.all(all_boxes[:, 2:] > 0)):
            raise ValueError(f"roidb_file: {roidb_file} has boxes with negative centres or empty sides")
        all_boxes[:, :2] = all_boxes[:, :2] - all_boxes[:, 2:] / 2
        all_boxes[:, 2:] = all_boxes[:, :2] + all_boxes[:, 2:]
        first_box = h5["img_to_first_box"][split_mask]
        last_box = h5["img_to_last_box"][split_mask]
        first_rel = h5["img_to_first_rel"][split_mask]
        last_rel = h5["img_to_last_rel"][split_mask]
        all_rels = h5["relationships"][:]
        all_preds = h5["predicates"][:, 0]
    if all_rels.shape[0] != all_preds.shape[0]:
        raise ValueError(f"roidb_file: {all_rels.shape[0]} relationships but {all_preds.shape[0]} predicates")

    boxes, classes, attributes, relations = [], [], [], []
    for i in range(len(image_index)):
        b0, b1, r0, r1 = first_box[i], last_box[i], first_rel[i], last_rel[i]
        boxes_i = all_boxes[b0:b1 + 1]
        if r0 >= 0:
            obj_idx = all_rels[r0:r1 + 1] - b0  # global -> local box indices
            if obj_idx.min() < 0 or obj_idx.max() >= boxes_i.shape[0]:
                raise ValueError(f"roidb_file: image row {image_index[i]} has relations pointing outside its boxes")
            rels = np.column_stack((obj_idx, all_preds[r0:r1 + 1])).astype(np.int64)
        else:
            rels = np.zeros((0, 3), dtype=np.int64)
        if filter_non_overlap:
            inters = box_iou(boxes_i, boxes_i, pixel_offset=1.0)
            inc = np.where(inters[rels[:, 0], rels[:, 1]] > 0.0)[0]
            if inc.size == 0:
                split_mask[image_index[i]] = False
                continue
            rels = rels[inc]
        boxes.append(boxes_i)
        classes.append(all_labels[b0:b1 + 1].astype(np.int64))
        attributes.append(all_attributes[b0:b1 + 1])
        relations.append(rels)
    return split_mask, boxes, classes, attributes, relations


class VG150Dataset:
    """The VG-150 scene-graph split of Scene-Graph-Benchmark.pytorch (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        roidb_file: path of ``VG-SGG-with-attri.h5``.
        dict_file: path of ``VG-SGG-dicts.json`` (or ``VG-SGG-dicts-with-attri.json``).
        image_file: path of ``image_data.json``.
        img_dir: folder of the ``<image_id>.jpg`` files; when given, entries whose file is missing are dropped before
            aligning with the h5 (as the reference does) and ``__getitem__`` loads images.
        filter_empty_rels, num_im, num_val_im, filter_non_overlap: as in the reference.
        filter_duplicate_rels: train only: keep one (random) predicate per ordered pair.
        seed: seed of the duplicate sampling.

    Items: ``(PIL image or None, ground truth dict)`` with ``boxes`` ``(N, 4)`` xyxy in image pixels (clipped to
    ``[0, W-1] x [0, H-1]`` as the reference's ``clip_to_image``), ``labels`` ``(N,)`` 1..150, ``attributes``,
    ``relations`` ``(M, 3)`` (all duplicates kept outside train: evaluation uses them), ``image_id``, ``width``,
    ``height``.
    """

    def __init__(self, split: str, roidb_file, dict_file, image_file, img_dir=None, filter_empty_rels: bool = True,
                 num_im: int = -1, num_val_im: int = 5000, filter_duplicate_rels: bool = True,
                 filter_non_overlap: bool = False, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        self.split = split
        self.img_dir = None if img_dir is None else Path(img_dir)
        self.filter_duplicate_rels = filter_duplicate_rels and split == "train"
        self.ind_to_classes, self.ind_to_predicates, self.ind_to_attributes = load_vg_info(dict_file)
        self.split_mask, self.gt_boxes, self.gt_classes, self.gt_attributes, self.relationships = load_vg_graphs(
            roidb_file, split, num_im, num_val_im=num_val_im, filter_empty_rels=filter_empty_rels,
            filter_non_overlap=filter_non_overlap and split == "train")
        with open(image_file, encoding="utf-8") as f:
            im_data = json.load(f)
        info = []
        for img in im_data:
            name = f"{img['image_id']}.jpg"
            if name in CORRUPTED_IMAGES:
                continue
            if self.img_dir is not None and not (self.img_dir / name).is_file():
                continue
            info.append(img)
        if len(info) != len(self.split_mask):
            raise ValueError(f"image_file: {len(info)} usable entries (after dropping {CORRUPTED_IMAGES}"
                             f"{' and missing files' if self.img_dir else ''}) but the h5 has {len(self.split_mask)} "
                             f"images; the full VG-150 release has 108,073 of each")
        self.img_info = [info[i] for i in np.where(self.split_mask)[0]]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.img_info)

    @property
    def num_object_classes(self) -> int:
        """Object classes including background (index 0): 151 for VG-150."""
        return len(self.ind_to_classes)

    @property
    def num_predicates(self) -> int:
        """Predicate classes including background (index 0): 51 for VG-150."""
        return len(self.ind_to_predicates)

    def get_groundtruth(self, index: int) -> dict:
        """Ground truth of image ``index`` (format in the class docstring)."""
        img = self.img_info[index]
        w, h = int(img["width"]), int(img["height"])
        box = self.gt_boxes[index] / BOX_SCALE * max(w, h)
        # the reference's clip_to_image (TO_REMOVE = 1): x in [0, W-1], y in [0, H-1]
        box = np.stack([box[:, 0].clip(0, w - 1), box[:, 1].clip(0, h - 1), box[:, 2].clip(0, w - 1),
                        box[:, 3].clip(0, h - 1)], axis=1).astype(np.float32)
        rel = self.relationships[index].copy()
        if self.filter_duplicate_rels:
            sets = defaultdict(list)
            for s, o, r in rel:
                sets[(int(s), int(o))].append(int(r))
            rel = np.array([(s, o, int(self.rng.choice(v))) for (s, o), v in sets.items()], dtype=np.int64)
            rel = rel.reshape(-1, 3)
        return {"boxes": box, "labels": self.gt_classes[index].copy(), "attributes": self.gt_attributes[index].copy(),
                "relations": rel, "image_id": img["image_id"], "width": w, "height": h}

    def __getitem__(self, index: int):
        gt = self.get_groundtruth(index)
        image = None
        if self.img_dir is not None:
            from PIL import Image

            image = Image.open(self.img_dir / f"{gt['image_id']}.jpg").convert("RGB")
        return image, gt

    def predicate_counts(self) -> np.ndarray:
        """``(num_predicates,)`` relation counts per predicate in this split (index 0 stays 0)."""
        counts = np.zeros(self.num_predicates, dtype=np.int64)
        for rel in self.relationships:
            counts += np.bincount(rel[:, 2], minlength=self.num_predicates)[:self.num_predicates]
        return counts

    def triplets(self) -> np.ndarray:
        """``(T, 3)`` distinct ``(subject label, object label, predicate)`` triplets of this split (for zR@K)."""
        rows = [np.stack([c[r[:, 0]], c[r[:, 1]], r[:, 2]], axis=1) for c, r in zip(self.gt_classes,
                                                                               self.relationships) if len(r)]
        return np.unique(np.concatenate(rows), axis=0) if rows else np.zeros((0, 3), np.int64)


# ----------------------------------------------------------------------------------------------------------------
# synthetic long-tailed scene graphs (shapes world)
# ----------------------------------------------------------------------------------------------------------------
def shapes_scene_graphs(start: int, count: int, num_objects: int = 4, image_size: int = 32, seed: int = 0):
    """``count`` synthetic scene graphs ``ShapesWorld(image_size, seed).scene_graph(i, num_objects)``, ``i >= start``.

    Predicates follow a Zipf-like long tail (``vlplugins.data.shapes.PREDICATE_FREQ``) and each is a function of the
    two boxes (``relation_of``); object labels are colour x shape (12 classes + background).

    Returns:
        ``(images, ground_truths)``: lists of PIL images and evaluator-format GT dicts.
    """
    from ..data import ShapesWorld

    world = ShapesWorld(image_size=image_size, seed=seed)
    images, gts = [], []
    i = start
    while len(images) < count:
        try:
            img, gt = world.scene_graph(i, num_objects=num_objects)
        except ValueError:
            # ShapesWorld._place_relative can ask numpy for uniform(low, high) with high < low by a rounding error
            # when an "inside" anchor is exactly as small as the new object (reported upstream); skip that scene.
            i += 1
            continue
        images.append(img)
        gts.append(gt)
        i += 1
    return images, gts


def relation_targets(ground_truths: Sequence[dict], pairs: Sequence) -> np.ndarray:
    """Predicate label per candidate pair: the annotated predicate, or 0 (background) for unannotated pairs.

    When a pair carries several predicates the first annotation wins (training targets; evaluation keeps all).

    Returns:
        ``(sum P_i,)`` int64.
    """
    out = []
    for gt, p in zip(ground_truths, pairs):
        p = np.asarray(p.cpu() if hasattr(p, "cpu") else p).reshape(-1, 2)
        n = len(gt["labels"])
        table = np.zeros((n, n), dtype=np.int64)
        for s, o, r in np.asarray(gt["relations"]).reshape(-1, 3)[::-1]:  # reversed: the first annotation wins
            table[s, o] = r
        out.append(table[p[:, 0], p[:, 1]])
    return np.concatenate(out) if out else np.zeros(0, np.int64)
