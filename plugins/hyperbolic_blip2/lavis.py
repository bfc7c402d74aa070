"""LAVIS adapter: registers ``blip2_hyperbolic`` in LAVIS' model registry (the only module that imports ``lavis``).

    import vlplugins.hyperbolic_blip2.lavis            # applies vlplugins.patches.lavis_* shims, then imports lavis
    from lavis.models import load_model
    model = load_model("blip2_hyperbolic", "pretrain", is_eval=True)

:class:`Blip2HyperbolicQformer` is LAVIS' ``Blip2Qformer`` (same weights, so BLIP-2 checkpoints load) plus the
vlplugins :class:`~vlplugins.hyperbolic_blip2.head.HyperbolicITCHead`: its ``forward`` is LAVIS' stage-1 forward
with the ITC replaced by the hyperbolic one (exp map of the unnormalised ``vision_proj`` / ``text_proj`` outputs,
cosine over the best query, Random Query Selection and Random Text Pruning in training); ITM (hard negatives from
the max-over-queries ITC similarity) and the captioning loss are unchanged. The head's temperature *is* LAVIS'
``temp`` parameter (shared), so BLIP-2 checkpoints set it.

Install (never let pip resolve LAVIS' pins, which downgrade transformers to 4.26)::

    pip install --no-deps salesforce-lavis==1.0.2
    pip install omegaconf iopath einops pandas webdataset opencv-python-headless pycocotools fairscale \\
        contexttimer ftfy decord timm

Single-process use: LAVIS calls ``torch.distributed.get_rank()``; :func:`ensure_distributed` starts a one-rank gloo
group when none exists.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..patches import lavis_optional_deps, lavis_transformers

lavis_optional_deps.apply()
lavis_transformers.apply()

from lavis.common.registry import registry  # noqa: E402
from lavis.models.base_model import all_gather_with_grad, concat_all_gather  # noqa: E402
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer  # noqa: E402
from lavis.models.blip_models.blip_outputs import BlipOutput  # noqa: E402

from .configuration import HyperbolicBlip2Config  # noqa: E402
from .data import random_text_pruning  # noqa: E402
from .head import HyperbolicITCHead  # noqa: E402
from .losses import sample_hard_negatives  # noqa: E402

MODEL_NAME = "blip2_hyperbolic"
CONFIG_DIR = Path(__file__).resolve().parent  # the yaml ships next to this module (package data)


def ensure_distributed() -> None:
    """Start a one-process gloo group (LAVIS' forward calls ``dist.get_rank()``) unless one is running."""
    if dist.is_available() and not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix="vlplugins_lavis_"), "store")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


@dataclass
class HyperbolicBlipOutput(BlipOutput):
    """LAVIS ``BlipOutput`` plus the hyperbolic readouts.

    Args:
        image_radius: ``(batch, num_queries)`` hyperbolic radius of every query.
        text_radius: ``(batch,)`` hyperbolic radius of the captions.
        logits_per_image: ``(batch, batch * world)`` s(I, T)/τ used by the ITC loss.
    """

    image_radius: Optional[torch.Tensor] = None
    text_radius: Optional[torch.Tensor] = None
    logits_per_image: Optional[torch.Tensor] = None


class Blip2HyperbolicQformer(Blip2Qformer):
    """LAVIS BLIP-2 stage-1 model (ViT + Q-Former) with the hyperbolic ITC of Mandica et al. (2024).

    Extra keyword arguments (also read from the ``hyperbolic:`` block of the model yaml) are
    :class:`HyperbolicBlip2Config` fields: ``curvature``, ``learn_curvature``, ``rqs_p``, ``rtp_max_span``,
    ``loss_type``, ``scale_init``, ...
    """

    PRETRAINED_MODEL_CONFIG_DICT = {"pretrain": str(CONFIG_DIR / "blip2_hyperbolic_pretrain.yaml")}

    def __init__(self, *args, hyperbolic: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        hyp = dict(hyperbolic or {})
        hyp.setdefault("temperature_init", 0.07)
        self.hyperbolic_config = HyperbolicBlip2Config(
            base_model_name_or_path="lavis:blip2", embed_dim=self.vision_proj.out_features,
            num_query_tokens=self.query_tokens.shape[1], **hyp)
        self.hyperbolic_head = HyperbolicITCHead(self.hyperbolic_config)
        # One temperature: LAVIS' `temp` (loaded from BLIP-2 checkpoints) is the head's τ.
        self.hyperbolic_head.temp = self.temp

    @classmethod
    def from_config(cls, cfg):
        """LAVIS factory: the base keys as ``Blip2Qformer.from_config`` plus the ``hyperbolic`` block."""
        hyperbolic = cfg.get("hyperbolic", None)
        hyperbolic = dict(hyperbolic) if hyperbolic is not None else {}
        model = cls(
            vit_model=cfg.get("vit_model", "eva_clip_g"), img_size=cfg.get("image_size"),
            drop_path_rate=cfg.get("drop_path_rate", 0), use_grad_checkpoint=cfg.get("use_grad_checkpoint", False),
            vit_precision=cfg.get("vit_precision", "fp16"), freeze_vit=cfg.get("freeze_vit", True),
            num_query_token=cfg.get("num_query_token"), cross_attention_freq=cfg.get("cross_attention_freq", 2),
            embed_dim=cfg.get("embed_dim", 256), max_txt_len=cfg.get("max_txt_len", 32), hyperbolic=hyperbolic,
        )
        model.load_checkpoint_from_config(cfg)
        return model

    def load_checkpoint_from_config(self, cfg, **kwargs):
        """As LAVIS, except that an empty ``pretrained`` (with ``load_finetuned: False``) keeps random weights."""
        if not cfg.get("load_finetuned", True) and not cfg.get("pretrained", None):
            return None
        return super().load_checkpoint_from_config(cfg, **kwargs)

    def forward(self, samples):
        """LAVIS stage-1 forward with the hyperbolic ITC.

        Args:
            samples: ``{"image": (B, 3, H, W), "text_input": list[str]}``.

        Returns:
            :class:`HyperbolicBlipOutput` with ``loss = loss_itc + loss_itm + loss_lm``.
        """
        image = samples["image"]
        text = samples["text_input"]
        if len(text) != image.shape[0]:
            raise ValueError(f"text_input: expected {image.shape[0]} captions (one per image), got {len(text)}")
        if not bool(torch.isfinite(image).all()):
            raise ValueError("image: expected finite pixel values, got NaN/inf")
        head = self.hyperbolic_head

        image_embeds = self.ln_vision(self.visual_encoder(image))
        image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long).to(image.device)
        query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_output = self.Qformer.bert(query_embeds=query_tokens, encoder_hidden_states=image_embeds,
                                         encoder_attention_mask=image_atts, use_cache=True, return_dict=True)
        img = head.embed(self.vision_proj(query_output.last_hidden_state), "image")  # e_j -> ball

        text_tokens = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.max_txt_len,
                                     return_tensors="pt").to(image.device)
        input_ids, attention_mask = text_tokens.input_ids, text_tokens.attention_mask
        if self.training and self.hyperbolic_config.rtp_max_span > 0:
            input_ids, attention_mask = random_text_pruning(input_ids, attention_mask,
                                                            self.hyperbolic_config.rtp_max_span,
                                                            pad_token_id=self.tokenizer.pad_token_id)
        text_output = self.Qformer.bert(input_ids, attention_mask=attention_mask, return_dict=True)
        txt = head.embed(self.text_proj(text_output.last_hidden_state[:, 0, :]), "text")  # u -> ball

        ###============== Hyperbolic image-text contrastive ===================###
        rank = dist.get_rank() if dist.is_initialized() else 0
        bs = image.size(0)
        # Gathered features carry no gradient (LAVIS' concat_all_gather); the local slice is put back with its
        # graph so that this rank's images and texts receive gradients, as in LAVIS.
        image_all = concat_all_gather(img.points)
        text_all = concat_all_gather(txt.points)
        image_all = torch.cat([image_all[: rank * bs], img.points, image_all[(rank + 1) * bs:]])
        text_all = torch.cat([text_all[: rank * bs], txt.points, text_all[(rank + 1) * bs:]])
        sim_all = head.query_text_similarity(image_all, text_all)  # (B*G, Q, B*G)
        if self.training and self.hyperbolic_config.rqs_p < 1.0:
            use_best, rand_idx = head.draw_rqs(bs, sim_all.shape[1], image.device)
            use_best = concat_all_gather(use_best.long()).bool()
            rand_idx = concat_all_gather(rand_idx)
            scores_all, _ = head.apply_rqs(sim_all, use_best, rand_idx)
        else:
            scores_all, _ = head.best_query(sim_all)
        temp = head.temperature()
        sim_i2t = scores_all[rank * bs: rank * bs + bs] / temp  # (B, B*G)
        sim_t2i = scores_all[:, rank * bs: rank * bs + bs].t() / temp  # (B, B*G)
        targets = torch.arange(rank * bs, rank * bs + bs, device=image.device)
        loss_itc = (F.cross_entropy(sim_i2t, targets, label_smoothing=self.hyperbolic_config.label_smoothing)
                    + F.cross_entropy(sim_t2i, targets, label_smoothing=self.hyperbolic_config.label_smoothing)) / 2

        ###============== Image-text matching (BLIP-2) ===================###
        best_all = head.best_query(sim_all.detach())[0] / temp.detach()
        text_input_ids_world = concat_all_gather(input_ids)
        text_attention_mask_world = concat_all_gather(attention_mask)
        image_embeds_world = all_gather_with_grad(image_embeds)
        best_i2t = best_all[rank * bs: rank * bs + bs]
        best_t2i = best_all[:, rank * bs: rank * bs + bs].t()
        # hard negatives from the max-over-queries similarity; the local block's diagonal is the positive
        neg_text_local, neg_image_local = sample_hard_negatives(best_i2t[:, rank * bs: rank * bs + bs],
                                                                best_t2i[:, rank * bs: rank * bs + bs],
                                                                deterministic=not self.training)
        if best_all.shape[0] == bs:  # single process: the whole matrix is the local block
            neg_text, neg_image = neg_text_local, neg_image_local
        else:
            with torch.no_grad():
                w_i2t = F.softmax(best_i2t, dim=1) + 1e-4
                w_i2t[:, rank * bs: rank * bs + bs].fill_diagonal_(0)
                w_t2i = F.softmax(best_t2i, dim=1) + 1e-4
                w_t2i[:, rank * bs: rank * bs + bs].fill_diagonal_(0)
                neg_text = torch.multinomial(w_i2t, 1).flatten()
                neg_image = torch.multinomial(w_t2i, 1).flatten()
        image_embeds_neg = image_embeds_world[neg_image]
        text_ids_neg = text_input_ids_world[neg_text]
        text_atts_neg = text_attention_mask_world[neg_text]

        text_ids_all = torch.cat([input_ids, input_ids, text_ids_neg], dim=0)  # pos, pos, neg
        text_atts_all = torch.cat([attention_mask, attention_mask, text_atts_neg], dim=0)
        query_tokens_itm = self.query_tokens.expand(text_ids_all.shape[0], -1, -1)
        query_atts_itm = torch.ones(query_tokens_itm.size()[:-1], dtype=torch.long).to(image.device)
        attention_mask_all = torch.cat([query_atts_itm, text_atts_all], dim=1)
        image_embeds_all = torch.cat([image_embeds, image_embeds_neg, image_embeds], dim=0)  # pos, neg, pos
        image_atts_all = torch.ones(image_embeds_all.size()[:-1], dtype=torch.long).to(image.device)
        output_itm = self.Qformer.bert(text_ids_all, query_embeds=query_tokens_itm, attention_mask=attention_mask_all,
                                       encoder_hidden_states=image_embeds_all, encoder_attention_mask=image_atts_all,
                                       return_dict=True)
        vl_embeddings = output_itm.last_hidden_state[:, : query_tokens_itm.size(1), :]
        logits = self.itm_head(vl_embeddings).mean(dim=1)
        itm_labels = torch.cat([torch.ones(bs, dtype=torch.long), torch.zeros(2 * bs, dtype=torch.long)]).to(
            image.device)
        loss_itm = F.cross_entropy(logits, itm_labels)

        ###============== Image captioning (BLIP-2) ===================###
        decoder_input_ids = input_ids.clone()
        decoder_input_ids[:, 0] = self.tokenizer.bos_token_id
        labels = decoder_input_ids.masked_fill(decoder_input_ids == self.tokenizer.pad_token_id, -100)
        query_atts = torch.ones(query_tokens.size()[:-1], dtype=torch.long).to(image.device)
        lm_output = self.Qformer(decoder_input_ids, attention_mask=torch.cat([query_atts, attention_mask], dim=1),
                                 past_key_values=query_output.past_key_values, return_dict=True, labels=labels)
        loss_lm = lm_output.loss

        return HyperbolicBlipOutput(loss=loss_itc + loss_itm + loss_lm, loss_itc=loss_itc, loss_itm=loss_itm,
                                    loss_lm=loss_lm, image_radius=img.radius, text_radius=txt.radius,
                                    logits_per_image=sim_i2t)


def register() -> type:
    """Register :class:`Blip2HyperbolicQformer` as ``blip2_hyperbolic`` (idempotent; LAVIS raises on duplicates)."""
    existing = registry.get_model_class(MODEL_NAME)
    if existing is None:
        registry.register_model(MODEL_NAME)(Blip2HyperbolicQformer)
        return Blip2HyperbolicQformer
    return existing


register()
