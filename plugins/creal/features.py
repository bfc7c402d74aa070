"""Relation features from images: RoIAlign over the patch grid of a frozen HF vision tower.

``RelationFeatureExtractor`` turns images + boxes into the subject / object / union features that
:class:`~vlplugins.creal.CReaLForRelationPrediction` consumes, so PredCls (GT boxes + labels), SGCls (GT boxes) and
SGDet (detector boxes + labels, see :func:`prepare_detections`) run end to end from pixels.

Supported towers: the vision part of a transformers ``CLIPModel`` / ``CLIPVisionModel`` (presets ``tiny-clip``,
``clip-vit-base-patch16``) or of a ``Blip2...`` model (presets ``tiny-blip2-retrieval``, ``blip2-itm-vit-g``). Both
produce ``last_hidden_state`` ``(B, 1 + g*g, H)``: a CLS token then a ``g x g`` grid of patch tokens.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .modeling import check_boxes


def all_ordered_pairs(num_boxes: int, device=None) -> torch.Tensor:
    """``(n (n-1), 2)`` every ordered pair ``(i, j)``, ``i != j``, row-major (the SGG candidate set)."""
    idx = torch.arange(num_boxes, device=device)
    ii, jj = torch.meshgrid(idx, idx, indexing="ij")
    keep = ii != jj
    return torch.stack([ii[keep], jj[keep]], dim=1)


def union_boxes(subject_boxes: torch.Tensor, object_boxes: torch.Tensor) -> torch.Tensor:
    """``(R, 4)`` smallest xyxy box holding both ``(R, 4)`` boxes."""
    return torch.cat([torch.minimum(subject_boxes[:, :2], object_boxes[:, :2]),
                      torch.maximum(subject_boxes[:, 2:], object_boxes[:, 2:])], dim=1)


def _vision_tower(model: nn.Module) -> nn.Module:
    """The vision encoder inside a CLIP / BLIP-2 model (or the model itself if it already is one)."""
    for attr in ("vision_model",):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


class RelationFeatureExtractor(nn.Module):
    """Frozen vision tower + RoIAlign -> subject / object / union features.

    Args:
        vision_model: a CLIP or BLIP-2 model (its ``vision_model`` is used) or a vision tower directly; frozen and put
            in eval mode here.
        output_size: RoIAlign output grid side; features are the flattened ``(H, s, s)`` maps, i.e.
            ``feature_dim = hidden_size * output_size**2``.
        sampling_ratio: RoIAlign samples per bin (``torchvision.ops.roi_align``).
    """

    def __init__(self, vision_model: nn.Module, output_size: int = 2, sampling_ratio: int = 2):
        super().__init__()
        self.vision = _vision_tower(vision_model).eval()
        self.vision.requires_grad_(False)
        cfg = self.vision.config
        self.image_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        self.grid = self.image_size // self.patch_size
        self.hidden_size = int(cfg.hidden_size)
        if output_size < 1:
            raise ValueError(f"output_size: expected >= 1, got {output_size}")
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    @property
    def feature_dim(self) -> int:
        """Width of each returned feature vector."""
        return self.hidden_size * self.output_size**2

    @classmethod
    def from_preset(cls, name: str = "tiny-clip", **kwargs) -> "RelationFeatureExtractor":
        """Extractor over a randomly initialised preset tower (``tiny-clip``, ``tiny-blip2-retrieval``, ...)."""
        from ..hub.presets import build_from_preset

        return cls(build_from_preset(name), **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_repo: str, model_cls=None, **kwargs) -> "RelationFeatureExtractor":
        """Extractor over a saved checkpoint (``model_cls`` defaults to ``transformers.AutoModel``)."""
        if model_cls is None:
            from transformers import AutoModel as model_cls
        return cls(model_cls.from_pretrained(path_or_repo), **kwargs)

    @torch.no_grad()
    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, H, g, g)`` patch-token grid of ``pixel_values`` ``(B, 3, S, S)`` (CLS token dropped)."""
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"pixel_values: expected shape (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(pixel_values.shape)}")
        dtype = next(self.vision.parameters()).dtype
        hidden = self.vision(pixel_values=pixel_values.to(dtype)).last_hidden_state
        tokens = hidden[:, -self.grid * self.grid:]  # the patch tokens follow the CLS token
        b = tokens.shape[0]
        return tokens.transpose(1, 2).reshape(b, self.hidden_size, self.grid, self.grid)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, boxes: Sequence[torch.Tensor],
                pairs: Optional[Sequence[torch.Tensor]] = None) -> dict:
        """Features for every candidate pair of every image.

        Args:
            pixel_values: ``(B, 3, S, S)`` images at the tower's resolution.
            boxes: ``B`` tensors ``(N_i, 4)`` xyxy in pixels of the ``S x S`` input.
            pairs: ``B`` tensors ``(P_i, 2)`` [subject index, object index]; default every ordered pair.

        Returns:
            dict with ``subject_features``, ``object_features``, ``union_features`` ``(R, feature_dim)``,
            ``pair_boxes`` ``(R, 8)``, ``image_sizes`` ``(R, 2)``, ``image_index`` ``(R,)`` (which image each pair
            belongs to, ``R = sum P_i``) and ``pairs`` (the per-image pair tensors used).
        """
        if len(boxes) != pixel_values.shape[0]:
            raise ValueError(f"boxes: expected one (N, 4) tensor per image ({pixel_values.shape[0]}), got {len(boxes)}")
        if pairs is not None and len(pairs) != len(boxes):
            raise ValueError(f"pairs: expected one (P, 2) tensor per image ({len(boxes)}), got {len(pairs)}")
        from torchvision.ops import roi_align

        device = pixel_values.device
        size = torch.tensor([self.image_size, self.image_size], dtype=torch.float32, device=device)
        all_pairs, subj, obj, img_idx = [], [], [], []
        for i, b in enumerate(boxes):
            b = torch.as_tensor(b, dtype=torch.float32, device=device)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes[{i}]: expected shape (N, 4), got {tuple(b.shape)}")
            check_boxes(f"boxes[{i}]", b, size)
            p = all_ordered_pairs(b.shape[0], device) if pairs is None else torch.as_tensor(pairs[i], device=device)
            if p.numel() and (p.ndim != 2 or p.shape[1] != 2 or int(p.min()) < 0 or int(p.max()) >= b.shape[0]):
                raise ValueError(f"pairs[{i}]: expected (P, 2) indices in [0, {b.shape[0] - 1}], got "
                                 f"shape {tuple(p.shape)}")
            p = p.reshape(-1, 2).long()
            all_pairs.append(p)
            subj.append(b[p[:, 0]])
            obj.append(b[p[:, 1]])
            img_idx.append(torch.full((p.shape[0],), i, dtype=torch.long, device=device))
        subj_b, obj_b, img = torch.cat(subj), torch.cat(obj), torch.cat(img_idx)
        fmap = self.feature_map(pixel_values).float()
        scale = self.grid / self.image_size  # pixels -> patch-grid coordinates

        def pool(bx: torch.Tensor) -> torch.Tensor:
            rois = torch.cat([img[:, None].float(), bx], dim=1)
            out = roi_align(fmap, rois, output_size=self.output_size, spatial_scale=scale,
                            sampling_ratio=self.sampling_ratio, aligned=True)
            return out.flatten(1)

        return {
            "subject_features": pool(subj_b),
            "object_features": pool(obj_b),
            "union_features": pool(union_boxes(subj_b, obj_b)),
            "pair_boxes": torch.cat([subj_b, obj_b], dim=1),
            "image_sizes": size.expand(subj_b.shape[0], 2).clone(),
            "image_index": img,
            "pairs": all_pairs,
        }


def prepare_detections(detections: dict, image_size: Sequence[float], num_object_classes: int,
                       label_offset: int = 0, score_threshold: float = 0.0,
                       max_detections: Optional[int] = None) -> dict:
    """Normalise one image's detector output for SGDet.

    Expected input (the format of transformers' ``post_process_object_detection``, e.g. DETR's)::

        {"boxes": (N, 4) xyxy in pixels of the image, "labels": (N,) class ids, "scores": (N,) confidences}

    Args:
        detections: the dict above (tensors).
        image_size: ``(width, height)`` of the image the boxes refer to; boxes are clipped to it (detectors overshoot).
        num_object_classes: object classes including background 0.
        label_offset: added to the labels so that they become ``1..num_object_classes-1`` (DETR's labels are 0-based
            over the foreground classes: use 1).
        score_threshold: drop detections scoring below it.
        max_detections: keep at most this many, highest scores first.

    Returns:
        ``{"boxes": (N', 4) float32, "labels": (N',) int64 in 1..num_object_classes-1, "scores": (N',) float32}``
        sorted by score.
    """
    for key in ("boxes", "labels", "scores"):
        if key not in detections:
            raise ValueError(f"detections: expected keys boxes/labels/scores, missing {key!r}")
    boxes = torch.as_tensor(detections["boxes"]).float().reshape(-1, 4)
    labels = torch.as_tensor(detections["labels"]).long().reshape(-1) + label_offset
    scores = torch.as_tensor(detections["scores"]).float().reshape(-1)
    if labels.shape[0] != boxes.shape[0] or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"detections: boxes/labels/scores must have the same length, got {boxes.shape[0]}, "
                         f"{labels.shape[0]}, {scores.shape[0]}")
    if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= num_object_classes):
        raise ValueError(f"detections['labels']: expected ids in [1, {num_object_classes - 1}] after label_offset="
                         f"{label_offset}, got range [{int(labels.min())}, {int(labels.max())}]")
    w, h = float(image_size[0]), float(image_size[1])
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                         boxes[:, 3].clamp(0, h)], dim=1)
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])], dim=1)  # clipping may invert
    keep = scores >= score_threshold
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    order = scores.argsort(descending=True, stable=True)
    if max_detections is not None:
        order = order[:max_detections]
    return {"boxes": boxes[order], "labels": labels[order], "scores": scores[order]}
