"""Contrastive attention: one pass == independent two-pass reference, λ=1 == plain, batches, generate entry points.

The reference below is written independently of the plugin: pass 1 runs an *eager* copy of the model with
``output_attentions=True`` and computes A(l), Hellinger, i*, IA and the ρ-quantile in float64 numpy; pass 2 runs the
model with a plain forward pre-hook on decoder layer r that scales the image hidden states.
"""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from vlplugins.contrastive_attention import (
    ContrastiveAttentionConfig,
    ContrastiveAttentionProcessor,
    enable_contrastive_attention,
    generate as ca_generate,
)
from vlplugins.hub import build_from_preset

IMAGE_TOKEN = 32000
PAD = 32001



# ---------------------------------------------------------------------------------------------- fixtures / inputs
_MODELS: dict = {}


def model_for(preset: str, attn: str = "sdpa", dtype=None):
    key = (preset, attn, dtype)
    if key not in _MODELS:
        _MODELS[key] = build_from_preset(preset, attn_implementation=attn, dtype=dtype)
    return _MODELS[key]


def config_for(preset: str, **overrides) -> ContrastiveAttentionConfig:
    return ContrastiveAttentionConfig.from_preset(preset, **overrides)


def llava_inputs(seeds=(0,), text_lens=(5,), dtype=torch.float32):
    """Left-padded LLaVA-1.5 batch: [pad.., BOS, 36 image tokens, text...]."""
    rows, pixels = [], []
    for seed, n_text in zip(seeds, text_lens):
        g = torch.Generator().manual_seed(seed)
        rows.append([1] + [IMAGE_TOKEN] * 36 + torch.randint(3, 2000, (n_text,), generator=g).tolist())
        pixels.append(torch.randn(3, 48, 48, generator=g))
    return _pad(rows) | {"pixel_values": torch.stack(pixels).to(dtype)}


def llava_next_inputs(model, sizes=((32, 64),), seeds=(0,), text_lens=(4,), dtype=torch.float32):
    """Left-padded LLaVA-NeXT batch with the image-token count the model expects for each image size."""
    cfg = model.config
    patches = [image_size_to_num_patches(s, cfg.image_grid_pinpoints, cfg.vision_config.image_size) for s in sizes]
    max_p = max(patches)
    rows, pixels = [], []
    for size, n_p, seed, n_text in zip(sizes, patches, seeds, text_lens):
        g = torch.Generator().manual_seed(seed)
        pv = torch.zeros(max_p, 3, 32, 32)
        pv[:n_p] = torch.randn(n_p, 3, 32, 32, generator=g)
        with torch.no_grad():
            feats = model.model.get_image_features(pv[:n_p].to(model.dtype), torch.tensor([size]),
                                                   vision_feature_layer=-2,
                                                   vision_feature_select_strategy="default").pooler_output
        n_img = feats[0].shape[0]
        rows.append([1] + torch.randint(3, 2000, (2,), generator=g).tolist() + [IMAGE_TOKEN] * n_img
                    + torch.randint(3, 2000, (n_text,), generator=g).tolist())
        pixels.append(pv)
    return _pad(rows) | {"pixel_values": torch.stack(pixels).to(dtype), "image_sizes": torch.tensor(sizes)}


def _pad(rows):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def select(inputs, i):
    """Row ``i`` of a batch, with its padding removed."""
    keep = inputs["attention_mask"][i].bool()
    out = {"input_ids": inputs["input_ids"][i:i + 1, keep], "attention_mask": inputs["attention_mask"][i:i + 1, keep],
           "pixel_values": inputs["pixel_values"][i:i + 1]}
    if "image_sizes" in inputs:
        out["image_sizes"] = inputs["image_sizes"][i:i + 1]
    return out


# ---------------------------------------------------------------------------------------------- the reference
def reference_scale(eager_model, inputs, cfg: ContrastiveAttentionConfig):
    """Pass 1 of the naive reference: eager forward with output_attentions, decision in float64 numpy.

    Returns (scale (batch, seq) float64 numpy, i_star list, suppressed (batch, seq) bool numpy, maps dict).
    """
    with torch.no_grad():
        out = eager_model(**inputs, output_attentions=True)
    ids = inputs["input_ids"]
    mask = inputs["attention_mask"]
    batch, seq = ids.shape
    candidates = [cfg.pre_layer] if cfg.pre_layer is not None else list(cfg.candidate_layers)
    scale = np.ones((batch, seq))
    suppressed = np.zeros((batch, seq), dtype=bool)
    i_stars, maps = [], {}
    for b in range(batch):
        q = int(np.nonzero(mask[b].numpy())[0].max())  # last real token
        img = (ids[b] == IMAGE_TOKEN).numpy()

        def a_of(layer):
            w = out.attentions[layer][b, :, q, :].double().numpy()  # (heads, seq)
            a = w.mean(0)[img] if cfg.head_reduction == "mean" else w.max(0)[img]
            return a / a.sum()

        a_k = a_of(cfg.post_integration_layer)
        dists = [np.sqrt(0.5 * np.sum((np.sqrt(a_of(i)) - np.sqrt(a_k)) ** 2)) for i in candidates]
        i_star = candidates[int(np.argmax(dists))]
        ia = np.abs(a_k - a_of(i_star))
        # linear-interpolation quantile at position ρ(n-1); a position within 1e-9 of an integer is that integer
        # (0.2 * 35 is 7.000000000000001 in float64), as documented by the plugin
        srt = np.sort(ia)
        pos = cfg.quantile * (len(ia) - 1)
        pos = float(round(pos)) if abs(pos - round(pos)) < 1e-9 else pos
        lo = int(np.floor(pos))
        thr = srt[lo] + (pos - lo) * (srt[min(lo + 1, len(ia) - 1)] - srt[lo])
        low = ia < thr
        pos = np.nonzero(img)[0]
        scale[b, pos[low]] = cfg.scale
        suppressed[b, pos[low]] = True
        i_stars.append(i_star)
        for layer in {*candidates, cfg.post_integration_layer}:
            maps.setdefault(layer, np.zeros((batch, seq)))[b, img] = a_of(layer)
    return scale, i_stars, suppressed, maps


class ScaleAtReviewLayer:
    """Pass 2 of the reference: a forward pre-hook on layer r multiplying the prefill hidden states by ``scale``."""

    def __init__(self, model, layer: int, scale: np.ndarray):
        self.scale = torch.from_numpy(scale)
        self.handle = model.model.language_model.layers[layer].register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        hidden = args[0]
        if hidden.shape[1] != self.scale.shape[1]:
            return None  # decoding step
        scale = self.scale.repeat_interleave(hidden.shape[0] // self.scale.shape[0], dim=0)  # beams: rows expanded
        return (hidden * scale.to(hidden.dtype)[..., None], *args[1:])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------------------------------------- config
def test_config_presets_roundtrip_and_folder(tmp_path):
    cfg = ContrastiveAttentionConfig.from_preset("llava-1.5-7b")
    assert (cfg.post_integration_layer, cfg.review_layer, cfg.candidate_layers) == (28, 29, [2, 4, 8, 11, 12, 13])
    assert (cfg.quantile, cfg.scale, cfg.head_reduction, cfg.query_position, cfg.pre_layer) == (0.2, 0.1, "mean",
                                                                                               "last", None)
    assert ContrastiveAttentionConfig.from_preset("llava-v1.6-vicuna-7b").review_layer == 29
    assert cfg.probe_layers == [2, 4, 8, 11, 12, 13, 28]
    cfg2 = ContrastiveAttentionConfig(post_integration_layer=3, review_layer=5, candidate_layers=[0, 2],
                                      quantile=0.35, scale=0.0, head_reduction="max", pre_layer=1)
    cfg2.save_pretrained(tmp_path)
    loaded = ContrastiveAttentionConfig.from_pretrained(tmp_path)
    for f in ("post_integration_layer", "review_layer", "candidate_layers", "quantile", "scale", "head_reduction",
              "query_position", "pre_layer"):
        assert getattr(loaded, f) == getattr(cfg2, f), f
    from transformers import AutoConfig

    assert type(AutoConfig.from_pretrained(tmp_path)) is ContrastiveAttentionConfig
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "contrastive_attention"
    gen = (tmp_path / "custom_generate" / "generate.py").read_text()
    assert "def generate(model, *args" in gen and '"quantile": 0.35' in gen
    assert "vlplugins" in (tmp_path / "custom_generate" / "requirements.txt").read_text()
    readme = (tmp_path / "README.md").read_text()
    assert "- custom_generate" in readme.split("---")[1]


def test_push_to_hub_uploads_config_and_custom_generate(fake_hub):
    cfg = ContrastiveAttentionConfig.from_preset("llava-1.5-7b")
    assert cfg.push_to_hub("user/llava15-contrastive-attention") == "commit-url"
    assert fake_hub.upload_repo_id == "user/llava15-contrastive-attention"
    assert sorted(fake_hub.files) == ["README.md", "config.json", "custom_generate/generate.py",
                                      "custom_generate/requirements.txt"]
    config = json.loads(fake_hub.text("config.json"))
    assert config["post_integration_layer"] == 28 and config["review_layer"] == 29
    readme = fake_hub.text("README.md")
    assert 'custom_generate="user/llava15-contrastive-attention"' in readme
    assert 'from_pretrained("llava-hf/llava-1.5-7b-hf")' in readme


@pytest.mark.parametrize("fields, argument", [
    ({"quantile": 0.0}, "quantile"), ({"quantile": 1.0}, "quantile"), ({"quantile": 1.5}, "quantile"),
    ({"scale": -0.1}, "scale"), ({"scale": float("nan")}, "scale"),
    ({"review_layer": 3}, "review_layer"), ({"candidate_layers": [0, 3]}, "candidate_layers"),
    ({"candidate_layers": []}, "candidate_layers"), ({"pre_layer": 3}, "pre_layer"),
    ({"head_reduction": "sum"}, "head_reduction"), ({"query_position": "first"}, "query_position"),
])
def test_invalid_fields_raise_naming_the_argument(fields, argument):
    base = dict(post_integration_layer=3, review_layer=4, candidate_layers=[0, 1, 2])
    with pytest.raises(ValueError, match=argument):
        ContrastiveAttentionConfig(**{**base, **fields})


def test_validation_against_the_model():
    model = model_for("tiny-llava")  # 6 decoder layers: 0..5
    with pytest.raises(ValueError, match="review_layer"):
        enable_contrastive_attention(model, config_for("tiny-llava", review_layer=6))
    with pytest.raises(ValueError, match="post_integration_layer"):
        enable_contrastive_attention(model, config_for("tiny-llava", post_integration_layer=7, review_layer=8))
    with pytest.raises(ValueError, match="model"):
        enable_contrastive_attention(build_from_preset("tiny-clip"), config_for("tiny-llava"))
    with pytest.raises(ValueError, match="config"):
        enable_contrastive_attention(model, 3.0)
    with enable_contrastive_attention(model, config_for("tiny-llava")):
        with pytest.raises(ValueError, match="already enabled"):
            enable_contrastive_attention(model, config_for("tiny-llava"))
        text_only = {"input_ids": torch.tensor([[1, 5, 6, 7]])}
        with pytest.raises(ValueError, match="input_ids"), torch.no_grad():
            model(**text_only)
        with pytest.raises(ValueError, match="input_ids"):
            model.generate(**text_only, max_new_tokens=2)
    assert model.config.text_config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="contrastive_attention"):
        ca_generate(model, **llava_inputs(), max_new_tokens=1)


# ---------------------------------------------------------------------------------------------- core equalities
def test_captured_rows_equal_eager_attention_weights():
    cfg = config_for("tiny-llava", candidate_layers=[0, 1, 2])
    inputs = llava_inputs(seeds=(0, 1), text_lens=(5, 2))
    eager = model_for("tiny-llava", "eager")
    _, _, _, ref_maps = reference_scale(eager, inputs, cfg)
    for attn in ("sdpa", "eager"):
        model = model_for("tiny-llava", attn)
        with enable_contrastive_attention(model, cfg) as h, torch.no_grad():
            model(**inputs)
        for layer, ref in ref_maps.items():
            got = h.last["maps"][layer].double().numpy()
            np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0, err_msg=f"{attn} layer {layer}")
            np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("preset, attn", [("tiny-llava", "sdpa"), ("tiny-llava", "eager"),
                                          ("tiny-llava-next", "sdpa")])
def test_one_pass_equals_two_pass_reference(preset, attn):
    model = model_for(preset, attn)
    eager = model_for(preset, "eager")
    cfg = config_for(preset, scale=0.05, quantile=0.3)
    if preset == "tiny-llava":
        inputs = llava_inputs(seeds=(0, 1, 2), text_lens=(5, 2, 7))
    else:
        inputs = llava_next_inputs(model, sizes=((32, 64), (64, 64)), seeds=(0, 1), text_lens=(4, 2))
    img_counts = (inputs["input_ids"] == IMAGE_TOKEN).sum(-1).tolist()
    scale, i_stars, suppressed, _ = reference_scale(eager, inputs, cfg)
    with torch.no_grad():
        plain = model(**inputs).logits
        with ScaleAtReviewLayer(model, cfg.review_layer, scale):
            ref_logits = model(**inputs).logits
            ref_ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        with enable_contrastive_attention(model, cfg) as h:
            logits = model(**inputs).logits
            assert h.last["i_star"].tolist() == i_stars
            assert torch.equal(h.last["suppressed"], torch.from_numpy(suppressed))
            ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    # ρ-quantile per row over the row's own (ragged) image tokens
    # (distinct IA values: exactly ceil(ρ (n - 1)) of a row's n image tokens lie strictly below the linear quantile)
    assert h.last["suppressed"].sum(-1).tolist() == [int(np.ceil(cfg.quantile * (n - 1))) for n in img_counts]
    assert (plain - ref_logits).abs().max() > 1e-3  # the method does change the model
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    assert torch.equal(ids, ref_ids)


def test_lambda_one_is_identical_to_the_plain_model():
    for preset in ("tiny-llava", "tiny-llava-next"):
        model = model_for(preset)
        inputs = llava_inputs(seeds=(3, 4), text_lens=(4, 6)) if preset == "tiny-llava" else \
            llava_next_inputs(model, sizes=((64, 32),), seeds=(3,))
        with torch.no_grad():
            plain = model(**inputs).logits
            plain_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
            with enable_contrastive_attention(model, config_for(preset, scale=1.0)) as h:
                same = model(**inputs).logits
                same_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert h.last["suppressed"].any()  # tokens were selected, and scaling them by 1 changes nothing
        assert torch.equal(plain, same) and torch.equal(plain_ids, same_ids)


def test_batch_rows_equal_single_runs_llava_next_ragged():
    model = model_for("tiny-llava-next")
    cfg = config_for("tiny-llava-next")
    inputs = llava_next_inputs(model, sizes=((32, 64), (64, 64), (64, 32)), seeds=(5, 6, 7), text_lens=(3, 5, 1))
    counts = (inputs["input_ids"] == IMAGE_TOKEN).sum(-1).tolist()
    assert counts == [52, 88, 56]
    with enable_contrastive_attention(model, cfg) as h, torch.no_grad():
        batch_ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        batch_last = h.last
        for i in range(3):
            single = select(inputs, i)
            single_ids = model.generate(**single, max_new_tokens=5, do_sample=False)
            assert torch.equal(batch_ids[i, -5:], single_ids[0, -5:])
            assert h.last["i_star"].item() == batch_last["i_star"][i].item()
            keep = inputs["attention_mask"][i].bool()
            assert torch.equal(h.last["suppressed"][0], batch_last["suppressed"][i, keep])
            torch.testing.assert_close(h.last["threshold"][0], batch_last["threshold"][i], atol=1e-7, rtol=1e-5)


def test_remove_restores_implementation_and_bit_identical_outputs():
    for attn in ("sdpa", "eager"):
        model = model_for("tiny-llava", attn)
        inputs = llava_inputs(seeds=(8,))
        impls = (model.config._attn_implementation, model.config.text_config._attn_implementation,
                 model.config.vision_config._attn_implementation)
        with torch.no_grad():
            before = model(**inputs).logits
            handle = enable_contrastive_attention(model, config_for("tiny-llava"))
            assert model.config.text_config._attn_implementation == f"contrastive_attention_{attn}"
            assert model.config.vision_config._attn_implementation == impls[2]
            changed = model(**inputs).logits
            handle.remove()
            handle.remove()  # idempotent
            after = model(**inputs).logits
        assert not torch.equal(before, changed)
        assert torch.equal(before, after)
        assert (model.config._attn_implementation, model.config.text_config._attn_implementation,
                model.config.vision_config._attn_implementation) == impls
        assert not any(m._forward_pre_hooks for m in model.modules())
        assert not any(hasattr(m, "_contrastive_attention_state") for m in model.modules())


# ---------------------------------------------------------------------------------------------- generate modes
def test_sampling_and_beam_search_equal_the_reference():
    model, eager = model_for("tiny-llava"), model_for("tiny-llava", "eager")
    cfg = config_for("tiny-llava")
    inputs = llava_inputs(seeds=(9, 10), text_lens=(3, 6))
    scale, _, _, _ = reference_scale(eager, inputs, cfg)
    kwargs = [dict(do_sample=True, top_k=50, temperature=1.5), dict(num_beams=3, do_sample=False)]
    for kw in kwargs:
        with torch.no_grad():
            with ScaleAtReviewLayer(model, cfg.review_layer, scale):
                torch.manual_seed(123)
                ref = model.generate(**inputs, max_new_tokens=6, **kw)
            with enable_contrastive_attention(model, cfg):
                torch.manual_seed(123)
                got = model.generate(**inputs, max_new_tokens=6, **kw)
            torch.manual_seed(123)
            got_cg = model.generate(**inputs, max_new_tokens=6, custom_generate=ca_generate,
                                    contrastive_attention=cfg, **kw)
        assert torch.equal(got, ref), kw
        assert torch.equal(got_cg, ref), kw


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_reference(dtype):
    model = model_for("tiny-llava", "sdpa", dtype)
    eager = model_for("tiny-llava", "eager", dtype)
    cfg = config_for("tiny-llava")
    inputs = llava_inputs(seeds=(11,), dtype=dtype)
    with torch.no_grad():
        try:
            eager(**inputs)
        except RuntimeError as err:  # pragma: no cover - fp16 kernels missing on some CPU builds
            pytest.skip(f"{dtype} not supported on this CPU: {err}")
        with enable_contrastive_attention(model, cfg) as h:
            logits = model(**inputs).logits
            ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    scale, i_stars, suppressed, maps = reference_scale(eager, inputs, cfg)
    for layer, ref in maps.items():  # the eager weights are rounded to dtype: compare at that resolution
        np.testing.assert_allclose(h.last["maps"][layer].double().numpy(), ref, atol=2e-2 * ref.max())
    with torch.no_grad(), ScaleAtReviewLayer(model, cfg.review_layer, h.last["scale"].double().numpy()):
        ref_logits = model(**inputs).logits
        ref_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert torch.equal(logits, ref_logits) and torch.equal(ids, ref_ids)
    # the decision itself agrees with the float64 eager reference on all but near-threshold tokens
    assert (h.last["suppressed"].numpy() != suppressed).sum() <= 2


# ---------------------------------------------------------------------------------------------- entry points
def test_processor_two_calls_different_images_no_leak():
    model = model_for("tiny-llava")
    cfg = config_for("tiny-llava")
    first, second = llava_inputs(seeds=(12,)), llava_inputs(seeds=(13,), text_lens=(3,))
    with torch.no_grad():
        expected = []
        for inputs in (first, second):
            with enable_contrastive_attention(model, cfg) as h:
                expected.append((model.generate(**inputs, max_new_tokens=5, do_sample=False),
                                 h.last["suppressed"].clone()))
        plain = model.generate(**first, max_new_tokens=5, do_sample=False)
        processor = ContrastiveAttentionProcessor(model, cfg)
        for inputs, (ids, suppressed) in zip((first, second), expected):
            got = model.generate(**inputs, max_new_tokens=5, do_sample=False, logits_processor=[processor])
            assert torch.equal(got, ids)
            assert torch.equal(processor.last["suppressed"], suppressed)
        assert processor.num_calls == 2 and processor.handle.state.last is None  # buffers freed per call
        assert not torch.equal(expected[0][1], expected[1][1])
        processor.remove()
        assert model.config.text_config._attn_implementation == "sdpa"
        with pytest.raises(RuntimeError, match="removed"):
            processor(first["input_ids"], torch.zeros(1, 10))
        # inline use: the processor is freed when generate returns, and the model is restored
        got = model.generate(**first, max_new_tokens=5, do_sample=False,
                             logits_processor=[ContrastiveAttentionProcessor(model, cfg)])
        gc.collect()
        assert torch.equal(got, expected[0][0])
        assert model.config.text_config._attn_implementation == "sdpa"
        assert torch.equal(model.generate(**first, max_new_tokens=5, do_sample=False), plain)


def test_custom_generate_callable_and_local_folder(tmp_path, monkeypatch):
    model = model_for("tiny-llava-next")
    cfg = config_for("tiny-llava-next", quantile=0.4)
    inputs = llava_next_inputs(model, sizes=((64, 64), (32, 64)), seeds=(14, 15), text_lens=(2, 4))
    with torch.no_grad():
        with enable_contrastive_attention(model, cfg):
            expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        plain = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert not torch.equal(plain, expected)
        got = model.generate(**inputs, max_new_tokens=5, do_sample=False, custom_generate=ca_generate,
                             contrastive_attention=cfg)
        assert torch.equal(got, expected)
        assert torch.equal(ca_generate(model, **inputs, max_new_tokens=5, do_sample=False,
                                       contrastive_attention=cfg), expected)
        cfg.save_pretrained(tmp_path / "ca-repo")
        monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
        got_dir = model.generate(**inputs, max_new_tokens=5, do_sample=False,
                                 custom_generate=str(tmp_path / "ca-repo"), trust_remote_code=True)
        assert torch.equal(got_dir, expected)
        got_dir_override = model.generate(**inputs, max_new_tokens=5, do_sample=False,
                                          custom_generate=str(tmp_path / "ca-repo"), trust_remote_code=True,
                                          contrastive_attention=config_for("tiny-llava-next", scale=1.0))
        assert torch.equal(got_dir_override, plain)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_pre_layer_fixed_and_head_max():
    model, eager = model_for("tiny-llava"), model_for("tiny-llava", "eager")
    for cfg in (config_for("tiny-llava", pre_layer=1), config_for("tiny-llava", head_reduction="max")):
        inputs = llava_inputs(seeds=(16, 17), text_lens=(2, 5))
        scale, i_stars, suppressed, _ = reference_scale(eager, inputs, cfg)
        with torch.no_grad(), enable_contrastive_attention(model, cfg) as h:
            model(**inputs)
        assert h.last["i_star"].tolist() == i_stars
        assert torch.equal(h.last["suppressed"], torch.from_numpy(suppressed))


def test_static_cache_and_num_return_sequences():
    model = model_for("tiny-llava")
    cfg = config_for("tiny-llava")
    inputs = llava_inputs(seeds=(18, 19), text_lens=(2, 4))
    with torch.no_grad(), enable_contrastive_attention(model, cfg) as h:
        dynamic = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        suppressed = h.last["suppressed"].clone()
        static = model.generate(**inputs, max_new_tokens=4, do_sample=False, cache_implementation="static")
        assert torch.equal(h.last["suppressed"], suppressed)
        torch.manual_seed(0)
        multi = model.generate(**inputs, max_new_tokens=4, do_sample=True, num_return_sequences=2)
        assert torch.equal(h.last["suppressed"], suppressed.repeat_interleave(2, dim=0))
    assert torch.equal(static, dynamic)
    assert multi.shape[0] == 4


def test_pipeline_accepts_the_processor():
    """image-text-to-text pipeline with a tiny offline word-level tokenizer (ids t0..t32063, <image> = 32000)."""
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast, pipeline

    vocab = {f"t{i}": i for i in range(32064)}
    for word, i in {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": IMAGE_TOKEN, "<pad>": PAD}.items():
        del vocab[f"t{i}"]
        vocab[word] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>")
    model = model_for("tiny-llava")
    cfg = config_for("tiny-llava")
    image = Image.fromarray((np.random.default_rng(1).random((48, 48, 3)) * 255).astype("uint8"))
    text = "<image> t5 t77 t901 t3"
    inputs = processor(images=image, text=text, return_tensors="pt")
    assert int((inputs["input_ids"] == IMAGE_TOKEN).sum()) == 36
    with torch.no_grad(), enable_contrastive_attention(model, cfg) as h:
        ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        expected_suppressed = h.last["suppressed"].clone()
    expected = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:])
    ca = ContrastiveAttentionProcessor(model, cfg)
    out = pipeline("image-text-to-text", model=model, processor=processor)(
        images=image, text=text, return_full_text=False,
        generate_kwargs={"max_new_tokens": 5, "do_sample": False, "logits_processor": [ca]})
    assert out[0]["generated_text"].strip() == expected.strip() and len(expected.split()) == 5
    assert ca.num_calls == 1 and torch.equal(ca.last["suppressed"], expected_suppressed)
    ca.remove()
    assert model.config.text_config._attn_implementation == "sdpa"


def test_blocked_key_copy_gives_the_same_rows(monkeypatch):
    import vlplugins.contrastive_attention.hooks as hooks

    cfg = config_for("tiny-llava")
    inputs = llava_inputs(seeds=(20, 21), text_lens=(3, 5))
    _, _, suppressed, ref_maps = reference_scale(model_for("tiny-llava", "eager"), inputs, cfg)
    # 2 rows x 2 kv heads x 16 dims x 4 bytes x 5 tokens: the probe row is built from 9 key blocks of 5 tokens
    monkeypatch.setattr(hooks, "_BLOCK_BYTES", 2 * 2 * 16 * 4 * 5)
    model = model_for("tiny-llava")
    with torch.no_grad(), enable_contrastive_attention(model, cfg) as h:
        model(**inputs)
    for layer, ref in ref_maps.items():
        np.testing.assert_allclose(h.last["maps"][layer].double().numpy(), ref, atol=2e-6, rtol=0)
    assert torch.equal(h.last["suppressed"], torch.from_numpy(suppressed))
