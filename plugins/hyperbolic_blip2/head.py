"""The hyperbolic ITC head: pre-map scaling, exp map onto the Poincaré ball, radius readout, similarities,
Random Query Selection.

One ``nn.Module`` shared by the transformers model (:mod:`.modeling`), the forward-hook attachment
(:mod:`.attach`) and the LAVIS model (:mod:`.lavis`), so all three compute the same numbers.

Paper symbols: e_j (query embedding j), u (text [CLS] embedding), exp^c_0 (exp map at the origin), α (pre-map
scale), τ (temperature), p (RQS probability).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import clamped_curvature, poincare
from .configuration import HyperbolicBlip2Config


@dataclass
class BallEmbedding:
    """Embeddings of one modality after the head.

    Attributes:
        tangent: ``(..., dim)`` scaled tangent vectors α·e (the pre-map features).
        points: ``(..., dim)`` points exp^c_0(α·e) on the ball (Euclidean geometry: ``tangent``).
        radius: ``(...)`` hyperbolic distance to the origin, exactly ``2|α·e|`` (from the tangent vector, so it does
            not saturate where float32 ``tanh`` rounds to 1).
        ball_norm: ``(...)`` Euclidean norm of the ball point, ``tanh(sqrt(c)|α·e|)/sqrt(c)``.
    """

    tangent: torch.Tensor
    points: torch.Tensor
    radius: torch.Tensor
    ball_norm: torch.Tensor


class HyperbolicITCHead(nn.Module):
    """Learnable scales, curvature and temperature of the hyperbolic ITC (no base-model weights).

    Args:
        config: a :class:`HyperbolicBlip2Config` (``embed_dim`` sets the scale initialisation).
    """

    def __init__(self, config: HyperbolicBlip2Config):
        super().__init__()
        self.config = config
        log_scale = math.log(config.initial_scale)
        # MERU: scales live in log space; the clamp to <= 0 in forward means "may shrink, never enlarge".
        self.log_alpha_image = nn.Parameter(torch.tensor(log_scale), requires_grad=config.learn_scale)
        self.log_alpha_text = nn.Parameter(torch.tensor(log_scale), requires_grad=config.learn_scale)
        self.log_curvature = nn.Parameter(torch.tensor(math.log(config.curvature)),
                                          requires_grad=config.learn_curvature)
        self.temp = nn.Parameter(torch.tensor(float(config.temperature_init)),
                                 requires_grad=config.learn_temperature)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Set every parameter to its configured initial value."""
        self.log_alpha_image.fill_(math.log(self.config.initial_scale))
        self.log_alpha_text.fill_(math.log(self.config.initial_scale))
        self.log_curvature.fill_(math.log(self.config.curvature))
        self.temp.fill_(float(self.config.temperature_init))

    # -- learnable scalars with their clamps --------------------------------------------------------------
    def curvature(self) -> torch.Tensor:
        """Curvature magnitude c (0-dim float32 tensor), clamped MERU-style to ``[c0/f, c0*f]`` when learnable."""
        log_c = self.log_curvature.float()
        if self.config.learn_curvature:
            return clamped_curvature(log_c, self.config.curvature, self.config.curvature_clamp_factor)
        return log_c.exp()

    def scale(self, modality: str) -> torch.Tensor:
        """Pre-map scale exp(log α) of ``"image"`` or ``"text"``, clamped to <= 1 (MERU: never up-scale)."""
        p = self.log_alpha_image if modality == "image" else self.log_alpha_text
        return p.float().clamp(max=0.0).exp()

    def temperature(self) -> torch.Tensor:
        """BLIP-2 ITC temperature τ clamped to ``[temperature_min, temperature_max]`` (LAVIS BLIP clamp)."""
        return self.temp.float().clamp(self.config.temperature_min, self.config.temperature_max)

    # -- maps -----------------------------------------------------------------------------------------------
    def embed(self, features: torch.Tensor, modality: str) -> BallEmbedding:
        """Scale unnormalised projection outputs and map them onto the ball.

        Args:
            features: ``(..., dim)`` ``vision_projection`` outputs (one per query) or ``text_projection`` of [CLS].
            modality: ``"image"`` or ``"text"`` (selects the scale α).

        Returns:
            :class:`BallEmbedding` in ``features.dtype`` (the maths runs in float32 at least).
        """
        dtype = features.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=features.device.type, enabled=False):
            v = features.to(compute) * self.scale(modality).to(compute)
            radius = poincare.expmap0_radius(v, self.curvature())
            if self.config.geometry == "poincare":
                c = self.curvature()
                points = poincare.expmap0(v, c)
                # |exp^c_0(v)| = tanh(sqrt(c)|v|)/sqrt(c), computed from v (the ball point may sit on the bound).
                ball_norm = torch.tanh(c.sqrt() * v.norm(dim=-1)) / c.sqrt()
            else:
                points = v
                ball_norm = v.norm(dim=-1)
        return BallEmbedding(v.to(dtype), points.to(dtype), radius.to(dtype), ball_norm.to(dtype))

    def query_text_similarity(self, image_points: torch.Tensor, text_points: torch.Tensor) -> torch.Tensor:
        """Similarity of every query of every image with every text.

        Args:
            image_points: ``(num_images, num_queries, dim)`` ball points.
            text_points: ``(num_texts, dim)`` ball points.

        Returns:
            ``(num_images, num_queries, num_texts)`` float32 similarities: cosine of the ball points
            (``loss_type="cosine"``) or minus the Poincaré distance (``"poincare_distance"``).
        """
        with torch.autocast(device_type=image_points.device.type, enabled=False):
            if self.config.loss_type == "cosine":
                img = F.normalize(image_points.float(), dim=-1)
                txt = F.normalize(text_points.float(), dim=-1)
                return torch.einsum("iqd,td->iqt", img, txt)
            b, n, d = image_points.shape
            dist = poincare.pairwise_dist(image_points.float().reshape(b * n, d), text_points.float(),
                                          self.curvature())
            return -dist.reshape(b, n, -1)

    @staticmethod
    def best_query(sim_q2t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Max over queries: ``(I, Q, T) -> ((I, T) values, (I, T) query indices)`` (deterministic eval rule)."""
        return sim_q2t.max(dim=1)

    def select_queries(self, sim_q2t: torch.Tensor, training: bool,
                       generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-text scores s(I, T) from per-query similarities with Random Query Selection.

        Training: per image, with probability ``rqs_p`` use the best query for every text, otherwise one query
        index drawn uniformly for that image, used for every text and for both directions (t2i = s^T).
        Eval: always the best query.

        Args:
            sim_q2t: ``(num_images, num_queries, num_texts)`` similarities.
            training: apply RQS.
            generator: optional RNG for the Bernoulli and index draws.

        Returns:
            ``scores (num_images, num_texts)`` and ``query_index (num_images, num_texts)`` (long).
        """
        if not training or float(self.config.rqs_p) >= 1.0:
            return self.best_query(sim_q2t)
        use_best, rand_idx = self.draw_rqs(sim_q2t.shape[0], sim_q2t.shape[1], sim_q2t.device, generator)
        return self.apply_rqs(sim_q2t, use_best, rand_idx)

    def draw_rqs(self, num_images: int, num_queries: int, device=None,
                 generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RQS draws: ``use_best (num_images,)`` bool ~ Bernoulli(rqs_p) and ``rand_idx (num_images,)`` uniform
        query indices (drawn on the CPU RNG, so results do not depend on the device)."""
        use_best = torch.rand(num_images, generator=generator) < float(self.config.rqs_p)
        rand_idx = torch.randint(num_queries, (num_images,), generator=generator)
        return use_best.to(device), rand_idx.to(device)

    @staticmethod
    def apply_rqs(sim_q2t: torch.Tensor, use_best: torch.Tensor,
                  rand_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(I, T)`` and query indices from ``(I, Q, T)`` similarities and the RQS draws of each image."""
        best, idx = sim_q2t.max(dim=1)
        rand_scores = sim_q2t[torch.arange(sim_q2t.shape[0], device=sim_q2t.device), rand_idx]  # (I, T)
        scores = torch.where(use_best[:, None], best, rand_scores)
        index = torch.where(use_best[:, None], idx, rand_idx[:, None].expand_as(idx))
        return scores, index
