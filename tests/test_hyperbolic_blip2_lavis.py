"""LAVIS adapter: `blip2_hyperbolic` in LAVIS' registry, built offline with tiny random ViT / Q-Former / tokenizer."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

if importlib.util.find_spec("lavis") is None:
    pytest.skip("salesforce-lavis is not installed (pip install --no-deps salesforce-lavis==1.0.2 plus the light "
                "deps listed in vlplugins/hyperbolic_blip2/lavis.py)", allow_module_level=True)

from vlplugins.hyperbolic_blip2 import lavis as hyp_lavis  # noqa: E402  (applies patches, imports lavis)

from lavis.common.registry import registry  # noqa: E402
from lavis.models import load_model  # noqa: E402
from lavis.models.blip2_models.blip2_qformer import Blip2Qformer  # noqa: E402

from vlplugins.data import VOCABULARY  # noqa: E402
from vlplugins.hub.tokenizers import word_tokenizer  # noqa: E402

HIDDEN, VIT_WIDTH = 32, 24


class TinyBlip2Hyperbolic(hyp_lavis.Blip2HyperbolicQformer):
    """Offline tiny build: the three LAVIS factory classmethods overridden (no BERT/EVA downloads)."""

    @classmethod
    def init_tokenizer(cls):
        tok = word_tokenizer(VOCABULARY)
        tok.add_special_tokens({"bos_token": "[DEC]"})
        return tok

    @classmethod
    def init_Qformer(cls, num_query_token, vision_width, cross_attention_freq=2):
        from lavis.models.blip2_models.Qformer import BertConfig, BertLMHeadModel

        cfg = BertConfig(vocab_size=40, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)
        cfg.encoder_width = vision_width
        cfg.add_cross_attention = True
        cfg.cross_attention_freq = cross_attention_freq
        cfg.query_length = num_query_token
        qformer = BertLMHeadModel(cfg)
        query_tokens = torch.nn.Parameter(torch.zeros(1, num_query_token, HIDDEN))
        query_tokens.data.normal_(mean=0.0, std=cfg.initializer_range)
        return qformer, query_tokens

    @classmethod
    def init_vision_encoder(cls, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        from lavis.models.blip2_models.blip2 import LayerNorm
        from lavis.models.eva_vit import VisionTransformer

        vit = VisionTransformer(img_size=img_size, patch_size=8, embed_dim=VIT_WIDTH, depth=1, num_heads=2,
                                mlp_ratio=2.0, qkv_bias=True, use_mean_pooling=False)
        return vit, LayerNorm(vit.num_features)


YAML = """
model:
  arch: blip2_hyperbolic
  load_finetuned: False
  pretrained: ""
  finetuned: ""
  image_size: 32
  drop_path_rate: 0
  use_grad_checkpoint: False
  vit_precision: "fp32"
  freeze_vit: True
  num_query_token: 4
  cross_attention_freq: 1
  max_txt_len: 16
  hyperbolic:
    curvature: 1.0
    rqs_p: 0.5
    rtp_max_span: 7
"""


@pytest.fixture(scope="module")
def lavis_model(tmp_path_factory):
    yaml = tmp_path_factory.mktemp("lavis") / "tiny.yaml"
    yaml.write_text(YAML)
    TinyBlip2Hyperbolic.PRETRAINED_MODEL_CONFIG_DICT = {"pretrain": str(yaml)}
    mapping = registry.mapping["model_name_mapping"]
    original = mapping[hyp_lavis.MODEL_NAME]
    mapping[hyp_lavis.MODEL_NAME] = TinyBlip2Hyperbolic
    try:
        torch.manual_seed(0)
        model = load_model(hyp_lavis.MODEL_NAME, "pretrain", is_eval=True)
    finally:
        mapping[hyp_lavis.MODEL_NAME] = original
    hyp_lavis.ensure_distributed()
    return model


def _samples(n=3):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 3, 32, 32, generator=g),
            "text_input": ["a small red circle left of a blue square", "a green triangle", "a shape"][:n]}


def test_registry_entry_and_idempotent_register():
    cls = registry.get_model_class("blip2_hyperbolic")
    assert cls is hyp_lavis.Blip2HyperbolicQformer and issubclass(cls, Blip2Qformer)
    assert hyp_lavis.register() is cls  # second registration is a no-op, not a KeyError
    assert cls.PRETRAINED_MODEL_CONFIG_DICT["pretrain"].endswith("blip2_hyperbolic_pretrain.yaml")
    # the shims were applied only where transformers 5 lacks the attribute, and are idempotent
    from vlplugins.patches import lavis_optional_deps, lavis_transformers

    assert lavis_transformers.apply() == [] and lavis_optional_deps.apply() == []
    import spacy

    with pytest.raises(ImportError, match="spacy"):
        spacy.load("en_core_web_sm")


def test_load_model_builds_tiny_offline_model(lavis_model):
    m = lavis_model
    assert isinstance(m, TinyBlip2Hyperbolic) and not m.training
    assert len(m.tokenizer) == len(dict.fromkeys(w.lower() for w in VOCABULARY)) + 5 + 1  # not the 5-token trap
    assert m.hyperbolic_head.temp is m.temp
    assert m.hyperbolic_config.rqs_p == 0.5 and m.hyperbolic_config.embed_dim == 256
    assert m.query_tokens.shape == (1, 4, HIDDEN)


def test_eval_itc_equals_lavis_itc_and_float64_reference(lavis_model):
    m = lavis_model
    samples = _samples()
    got = {}
    h1 = m.vision_proj.register_forward_hook(lambda mod, a, o: got.__setitem__("e", o.detach().double()))
    h2 = m.text_proj.register_forward_hook(lambda mod, a, o: got.__setitem__("u", o.detach().double()))
    with torch.no_grad():
        out = m(samples)
    h1.remove()
    h2.remove()
    with torch.no_grad():
        ref_lavis = Blip2Qformer.forward(m, samples)  # LAVIS' own Euclidean ITC
    assert abs(float(out.loss_itc) - float(ref_lavis.loss_itc)) < 1e-5  # cosine in the ball == BLIP-2 cosine
    alpha = 1 / math.sqrt(256)
    e, u = got["e"] * alpha, got["u"] * alpha
    torch.testing.assert_close(out.image_radius.double(), 2 * e.norm(dim=-1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.text_radius.double(), 2 * u.norm(dim=-1), rtol=1e-5, atol=1e-7)
    cos = torch.einsum("iqd,td->iqt", F.normalize(e, dim=-1), F.normalize(u, dim=-1)).max(dim=1).values
    logits = cos / float(m.temp)
    tgt = torch.arange(3)
    ref = (F.cross_entropy(logits, tgt, label_smoothing=0.1) + F.cross_entropy(logits.t(), tgt, label_smoothing=0.1)) / 2
    assert abs(float(out.loss_itc) - float(ref)) < 1e-5
    assert abs(float(out.loss) - float(out.loss_itc + out.loss_itm + out.loss_lm)) < 1e-5


def test_training_forward_backward_and_bad_input(lavis_model):
    m = lavis_model
    m.train()
    try:
        torch.manual_seed(0)
        out = m(_samples())
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert m.Qformer.bert.encoder.layer[0].attention.self.query.weight.grad is not None
        assert m.visual_encoder.patch_embed.proj.weight.grad is None  # frozen ViT
        m.zero_grad(set_to_none=True)
    finally:
        m.eval()
    bad = _samples()
    bad["text_input"] = bad["text_input"][:2]
    with pytest.raises(ValueError, match="text_input"):
        m(bad)
    bad = _samples()
    bad["image"][0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="image"):
        m(bad)
