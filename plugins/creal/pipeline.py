"""End-to-end glue: images + boxes -> pair features -> relation scores -> evaluator predictions.

PredCls: GT boxes and labels (object scores 1). SGCls: GT boxes with labels/scores from any object classifier.
SGDet: detector boxes/labels/scores (see :func:`vlplugins.creal.features.prepare_detections`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..data import CLIP_MEAN, CLIP_STD


def extract_relation_inputs(extractor, images: Sequence, boxes: Sequence, labels: Sequence,
                            batch_size: int = 64, mean=CLIP_MEAN, std=CLIP_STD,
                            device: Optional[torch.device] = None) -> dict:
    """Pair features of every ordered pair of every image.

    Args:
        extractor: :class:`~vlplugins.creal.features.RelationFeatureExtractor`.
        images: PIL images (any size; resized to the tower's square input, boxes scaled alike).
        boxes: per image ``(N_i, 4)`` xyxy in pixels of that image.
        labels: per image ``(N_i,)`` object class ids.
        batch_size: images per tower forward.

    Returns:
        dict of tensors over all ``R`` pairs: ``subject_features``, ``object_features``, ``union_features``,
        ``pair_boxes`` (in the resized frame), ``image_sizes``, ``subject_labels``, ``object_labels``,
        ``image_index``; plus ``pairs`` (list of per-image ``(P_i, 2)``).
    """
    from ..data import images_to_tensor

    if len(images) == 0:
        raise ValueError("images: expected at least one image, got none")
    if not (len(images) == len(boxes) == len(labels)):
        raise ValueError(f"images/boxes/labels: expected equal lengths, got {len(images)}, {len(boxes)}, "
                         f"{len(labels)}")
    s = extractor.image_size
    device = device or next(extractor.parameters()).device
    chunks, all_pairs = [], []
    for start in range(0, len(images), batch_size):
        ims = images[start:start + batch_size]
        resized, bxs = [], []
        for j, im in enumerate(ims):
            w, h = im.size
            b = torch.as_tensor(np.asarray(boxes[start + j], dtype=np.float32)).reshape(-1, 4)
            from .modeling import check_boxes

            check_boxes(f"boxes[{start + j}]", b, torch.tensor([float(w), float(h)]))
            bxs.append((b * torch.tensor([s / w, s / h, s / w, s / h])).clamp(0, s))
            resized.append(im if (w, h) == (s, s) else im.resize((s, s)))
        px = images_to_tensor(resized, mean, std).to(device)
        out = extractor(px, [b.to(device) for b in bxs])
        lab = [torch.as_tensor(np.asarray(labels[start + j]), dtype=torch.long, device=device)
               for j in range(len(ims))]
        out["subject_labels"] = torch.cat([lab[j][p[:, 0]] for j, p in enumerate(out["pairs"])])
        out["object_labels"] = torch.cat([lab[j][p[:, 1]] for j, p in enumerate(out["pairs"])])
        out["image_index"] = out["image_index"] + start
        all_pairs += out.pop("pairs")
        chunks.append(out)
    merged = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    merged["pairs"] = all_pairs
    return merged


MODEL_INPUTS = ("subject_features", "object_features", "union_features", "pair_boxes", "image_sizes",
                "subject_labels", "object_labels")


@torch.no_grad()
def relation_scores(model, inputs: dict, batch_size: int = 4096) -> torch.Tensor:
    """``(R, K+1)`` softmax predicate probabilities of ``model`` over the pairs in ``inputs``."""
    model.eval()
    out = []
    r = inputs["subject_features"].shape[0]
    for start in range(0, r, batch_size):
        batch = {k: inputs[k][start:start + batch_size] for k in MODEL_INPUTS if k in inputs}
        out.append(model(**batch).logits.float().softmax(-1))
    return torch.cat(out) if out else torch.zeros(0, model.config.num_predicate_classes)


def predictions_per_image(inputs: dict, rel_probs: torch.Tensor, objects: Sequence[dict]) -> list[dict]:
    """Split pair scores into per-image evaluator predictions.

    Args:
        inputs: output of :func:`extract_relation_inputs` (its ``pairs`` and ``image_index``).
        rel_probs: ``(R, K+1)`` relation probabilities.
        objects: per image ``{"boxes", "labels", "scores"}`` in the image's original frame (GT boxes with scores 1 in
            PredCls).

    Returns:
        Per image ``{"boxes", "labels", "scores", "rel_pairs", "rel_scores"}`` numpy arrays.
    """
    preds, start = [], 0
    for i, p in enumerate(inputs["pairs"]):
        n = p.shape[0]
        preds.append({"boxes": np.asarray(objects[i]["boxes"]), "labels": np.asarray(objects[i]["labels"]),
                      "scores": np.asarray(objects[i]["scores"]), "rel_pairs": p.cpu().numpy(),
                      "rel_scores": rel_probs[start:start + n].cpu().numpy()})
        start += n
    return preds
