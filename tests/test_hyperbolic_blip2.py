"""Hyperbolic BLIP-2 head: numbers against float64 references, RQS/RTP draws, ITM negatives, attach/detach,
checkpoints, push, bad input, retrieval evaluation, PEFT and the Trainer-based CLI (all offline, tiny models)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import vlplugins  # noqa: F401  (registers the Auto classes)
from vlplugins.hub import build_from_preset
from vlplugins.hyperbolic_blip2 import (HyperbolicBlip2Config, HyperbolicBlip2ForImageTextRetrieval,
                                        HyperbolicITCHead, attach_hyperbolic_head, random_text_pruning,
                                        read_coco_karpathy)
from vlplugins.hyperbolic_blip2.data import content_mask
from vlplugins.hyperbolic_blip2.evaluation import itm_rerank, recall_at_k, retrieval_ranks
from vlplugins.hyperbolic_blip2.losses import itc_loss, sample_hard_negatives

PRESET = "preset:tiny-blip2-retrieval"


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(n, 3, 32, 32, generator=g)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0], [2, 10, 11, 12, 13, 3], [2, 14, 3, 0, 0, 0],
                        [2, 15, 16, 3, 0, 0], [2, 17, 18, 19, 3, 0]])[:n]
    return px, ids, (ids != 0).long()


@pytest.fixture(scope="module")
def model():
    # tiny_base: the preset with N(0, 0.08^2) weights, so images and captions give distinct embeddings
    from vlplugins.hyperbolic_blip2.demo import tiny_base

    model = HyperbolicBlip2ForImageTextRetrieval.from_base(tiny_base(0))
    model.config.base_model_name_or_path = PRESET  # what from_pretrained rebuilds (weights come from the file)
    model.config.trained_base_modules.append("vision_model")
    return model


def _projections(base, px, ids, mask):
    """Unnormalised projection outputs captured from transformers' own ITC forward (independent path)."""
    got = {}
    h1 = base.vision_projection.register_forward_hook(lambda m, a, o: got.__setitem__("img", o.detach().double()))
    h2 = base.text_projection.register_forward_hook(lambda m, a, o: got.__setitem__("txt", o.detach().double()))
    with torch.no_grad():
        ref = base(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
    h1.remove()
    h2.remove()
    return got["img"], got["txt"], ref


def _smoothed_ce(logits, eps):
    """float64 label-smoothed cross-entropy with diagonal targets, written out."""
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    k = logits.shape[1]
    target = torch.full_like(logp, eps / k)
    target += torch.eye(k, dtype=logp.dtype) * (1 - eps)
    return -(target * logp).sum(1).mean()


# -- config -----------------------------------------------------------------------------------------------
def test_config_defaults_and_validation():
    cfg = HyperbolicBlip2Config()
    assert cfg.model_type == "hyperbolic_blip2"
    assert (cfg.curvature, cfg.learn_curvature, cfg.rqs_p, cfg.rtp_max_span) == (1.0, False, 0.5, 7)
    assert (cfg.temperature_init, cfg.label_smoothing, cfg.loss_type, cfg.use_itm) == (0.07, 0.1, "cosine", True)
    for kw, name in [({"curvature": 0.0}, "curvature"), ({"curvature": -1.0}, "curvature"),
                     ({"rqs_p": 1.5}, "rqs_p"), ({"rtp_max_span": -1}, "rtp_max_span"),
                     ({"loss_type": "l2"}, "loss_type"), ({"scale_init": 2.0}, "scale_init"),
                     ({"geometry": "euclidean", "loss_type": "poincare_distance"}, "loss_type"),
                     ({"geometry": "lorentz"}, "geometry"), ({"base_model_name_or_path": None}, "base_model")]:
        with pytest.raises(ValueError, match=name):
            HyperbolicBlip2Config(**kw)
    with pytest.raises(ValueError, match="curvature"):
        HyperbolicBlip2ForImageTextRetrieval.from_base(PRESET, curvature=-0.5)
    # nested Blip2Config round trip
    base_cfg = build_from_preset("tiny-blip2-retrieval", device="meta").config
    cfg = HyperbolicBlip2Config(base_model_name_or_path=None, base_config=base_cfg)
    assert cfg.embed_dim == 32 and cfg.num_query_tokens == 8
    assert cfg.blip2_config().qformer_config.vocab_size == 128


# -- head maths ---------------------------------------------------------------------------------------------
def test_head_embed_matches_float64_reference_and_never_saturates():
    cfg = HyperbolicBlip2Config(embed_dim=16, curvature=2.0)
    head = HyperbolicITCHead(cfg)
    assert math.isclose(float(head.scale("image").detach()), 0.25, rel_tol=1e-6)  # 1/sqrt(16)
    g = torch.Generator().manual_seed(0)
    e = torch.randn(5, 3, 16, generator=g, dtype=torch.float64) * torch.tensor([0.1, 4.0, 40.0]).double()[None, :, None]
    out = head.embed(e.float(), "image")
    v = e * 0.25
    n = v.norm(dim=-1, keepdim=True)
    sc = math.sqrt(2.0)
    ref_points = torch.tanh(sc * n) * v / (sc * n)
    torch.testing.assert_close(out.radius.double(), 2 * n.squeeze(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.ball_norm.double(), (torch.tanh(sc * n) / sc).squeeze(-1), rtol=1e-6, atol=1e-7)
    small = n.squeeze(-1) * sc < 3  # below float32 tanh saturation the point itself matches
    torch.testing.assert_close(out.points.double()[small], ref_points[small], rtol=1e-5, atol=1e-7)
    # points stay inside the ball; the radius from the tangent vector is exact even where tanh == 1 in float32
    assert float((out.points.norm(dim=-1) * sc).max()) < 1.0
    assert float(out.radius.max()) > 20 and torch.isfinite(out.radius).all()
    # Poincaré radius of the ball point agrees with 2|v| where it is representable
    d0 = 2 / sc * torch.atanh(sc * ref_points.norm(dim=-1))
    torch.testing.assert_close(out.radius.double()[small], d0[small], rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_low_precision_is_finite(dtype):
    head = HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=32, loss_type="poincare_distance"))
    e = torch.randn(4, 8, 32) * torch.tensor([1e-4, 1.0, 100.0, 3e3]).view(4, 1, 1)
    img = head.embed(e.to(dtype), "image")
    txt = head.embed(torch.randn(4, 32).to(dtype) * 50, "text")
    sim = head.query_text_similarity(img.points, txt.points)
    assert img.points.dtype == dtype
    for t in (img.points, img.radius, txt.radius, sim):
        assert torch.isfinite(t.float()).all()


def test_euclidean_geometry_is_the_blip2_baseline():
    head = HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=9, geometry="euclidean"))
    e = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(0))
    out = head.embed(e, "image")
    torch.testing.assert_close(out.points, e / 3)  # scale 1/sqrt(9), no exp map
    torch.testing.assert_close(out.radius, 2 * (e / 3).norm(dim=-1))
    hyp = HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=9)).embed(e, "image")
    t = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))
    sim_e = head.query_text_similarity(out.points, head.embed(t, "text").points)
    sim_h = head.query_text_similarity(hyp.points, HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=9)).embed(
        t, "text").points)
    torch.testing.assert_close(sim_e, sim_h, rtol=1e-5, atol=1e-6)  # cosine is invariant to the radial exp map


def test_bf16_model_forward_is_finite(model):
    import copy

    m16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    px, ids, mask = _batch(3)
    with torch.no_grad():
        out = m16(pixel_values=px.to(torch.bfloat16), input_ids=ids, attention_mask=mask, return_loss=True)
    assert out.image_embeds.dtype == torch.bfloat16
    for t in (out.loss, out.logits_per_image, out.image_radius, out.text_radius, out.image_embeds):
        assert torch.isfinite(t.float()).all()
    assert float(out.image_embeds.float().norm(dim=-1).max()) < 1.0


def test_learnable_curvature_and_scale_clamps():
    head = HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=4, curvature=0.5, learn_curvature=True))
    assert head.log_curvature.requires_grad
    with torch.no_grad():
        head.log_curvature.fill_(10.0)
        head.log_alpha_text.fill_(3.0)
        head.temp.fill_(5.0)
    assert math.isclose(float(head.curvature()), 5.0, rel_tol=1e-5)  # c0 * 10
    assert float(head.scale("text").detach()) == 1.0  # exp(log alpha) clamped to <= 1
    assert math.isclose(float(head.temperature()), 0.5, rel_tol=1e-6)
    with torch.no_grad():
        head.log_curvature.fill_(-10.0)
    assert math.isclose(float(head.curvature()), 0.05, rel_tol=1e-5)
    fixed = HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=4))
    assert not fixed.log_curvature.requires_grad


def test_rqs_selection_rule():
    head = HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=4, rqs_p=0.5))
    sim = torch.randn(200, 8, 7, generator=torch.Generator().manual_seed(1))
    best, idx = sim.max(dim=1)
    ev, ev_idx = head.select_queries(sim, training=False)
    assert torch.equal(ev, best) and torch.equal(ev_idx, idx)
    scores, index = head.select_queries(sim, training=True, generator=torch.Generator().manual_seed(3))
    # reproduce the draws: Bernoulli(p) per image, then one uniform query per image
    g = torch.Generator().manual_seed(3)
    use_best = torch.rand(200, generator=g) < 0.5
    rand_idx = torch.randint(8, (200,), generator=g)
    for i in range(200):
        if use_best[i]:
            assert torch.equal(scores[i], best[i]) and torch.equal(index[i], idx[i])
        else:
            assert torch.equal(scores[i], sim[i, rand_idx[i]])
            assert bool((index[i] == rand_idx[i]).all())  # one query for every text of this image
    assert 70 < int(use_best.sum()) < 130
    always = HyperbolicITCHead(HyperbolicBlip2Config(embed_dim=4, rqs_p=1.0))
    assert torch.equal(always.select_queries(sim, training=True)[0], best)


# -- RTP ------------------------------------------------------------------------------------------------------
def _rtp_reference(ids_row, mask_row, g, max_span):
    toks = [int(t) for t, m in zip(ids_row, mask_row) if m]
    cls, content, sep = toks[0], toks[1:-1], toks[-1]
    length = min(int(torch.randint(0, max_span + 1, (1,), generator=g)), len(content) - 1)
    start = int(torch.randint(0, len(content) - length + 1, (1,), generator=g))
    kept = [cls] + content[:start] + content[start + length:] + [sep]
    return kept + [0] * (len(ids_row) - len(kept))


def test_random_text_pruning_matches_reference_and_invariants():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 14, (300,), generator=g)
    ids = torch.zeros(300, 16, dtype=torch.long)
    for r, n in enumerate(lengths.tolist()):
        ids[r, 0] = 2
        ids[r, 1:n + 1] = torch.randint(5, 100, (n,), generator=g)
        ids[r, n + 1] = 3
    mask = (ids != 0).long()
    out_ids, out_mask = random_text_pruning(ids, mask, 7, torch.Generator().manual_seed(5))
    ref_g = torch.Generator().manual_seed(5)
    removed = []
    for r in range(300):
        ref = _rtp_reference(ids[r].tolist(), mask[r].tolist(), ref_g, 7)
        assert out_ids[r].tolist() == ref
        assert out_mask[r].tolist() == [1 if t else 0 for t in ref]
        assert out_ids[r, 0] == 2 and 3 in out_ids[r].tolist()
        n_after = int(out_mask[r].sum()) - 2
        assert n_after >= 1
        removed.append(int(lengths[r]) - n_after)
    assert min(removed) == 0 and max(removed) == 7
    # max_span=0 is the identity; a caption with only [CLS] [SEP] is rejected
    same = random_text_pruning(ids, mask, 0)
    assert torch.equal(same[0], ids) and torch.equal(same[1], mask)
    with pytest.raises(ValueError, match="input_ids"):
        random_text_pruning(torch.tensor([[2, 3, 0]]), torch.tensor([[1, 1, 0]]))
    # explicit special ids: [MASK]=4 inside the caption is never removed
    ids2 = torch.tensor([[2, 7, 4, 8, 9, 10, 11, 3]])
    for seed in range(20):
        o, _ = random_text_pruning(ids2, torch.ones_like(ids2), 7, torch.Generator().manual_seed(seed),
                                   special_token_ids=[0, 2, 3, 4])
        assert 4 in o[0].tolist() and o[0, 0] == 2
    cm = content_mask(ids2, torch.ones_like(ids2), [0, 2, 3, 4])
    assert cm.tolist() == [[False, True, False, True, True, True, True, False]]


# -- forward vs references -----------------------------------------------------------------------------------
def test_eval_forward_matches_transformers_itc_and_float64_loss(model):
    px, ids, mask = _batch(4)
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids, attention_mask=mask, return_loss=True)
        out2 = model(pixel_values=px, input_ids=ids, attention_mask=mask, return_loss=True)
    assert torch.equal(out.logits_per_image, out2.logits_per_image) and torch.equal(out.loss, out2.loss)
    e, u, hf = _projections(model.base, px, ids, mask)
    # cosine ITC over the best query equals transformers' ITC logits (exp_0 is a radial rescaling)
    temp = float(model.head.temperature())
    torch.testing.assert_close(out.logits_per_image * temp, hf.logits_per_image, rtol=1e-5, atol=1e-6)
    # float64 reference of the whole head: scale, exp map, radius, max over queries, smoothed symmetric CE
    alpha = 1 / math.sqrt(32)
    v, t = e * alpha, u * alpha
    torch.testing.assert_close(out.image_radius.double(), 2 * v.norm(dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.text_radius.double(), 2 * t.norm(dim=-1), rtol=1e-5, atol=1e-6)
    cos = torch.einsum("iqd,td->iqt", F.normalize(v, dim=-1), F.normalize(t, dim=-1))
    s, q = cos.max(dim=1)
    logits = s / temp
    ref_itc = (_smoothed_ce(logits, 0.1) + _smoothed_ce(logits.t(), 0.1)) / 2
    assert abs(float(out.loss_itc) - float(ref_itc)) < 1e-5
    assert torch.equal(out.query_index, q)
    rows = torch.arange(4)
    torch.testing.assert_close(out.image_radius_selected, out.image_radius[rows, q[rows, rows]])
    # ITM: the ITM loss is the CE over [pos, neg-image, neg-text] and loss = itc + itm
    assert out.loss_itm is not None
    assert abs(float(out.loss) - float(out.loss_itc + out.loss_itm)) < 1e-6


def test_poincare_distance_loss_matches_closed_form():
    torch.manual_seed(0)
    m = HyperbolicBlip2ForImageTextRetrieval.from_base(PRESET, loss_type="poincare_distance", use_itm=False,
                                                      curvature=0.7, scale_init=0.5)
    px, ids, mask = _batch(3)
    with torch.no_grad():
        out = m(pixel_values=px, input_ids=ids, attention_mask=mask, return_loss=True)
    e, u, _ = _projections(m.base, px, ids, mask)
    c = 0.7
    sc = math.sqrt(c)

    def exp0(v):
        n = v.norm(dim=-1, keepdim=True)
        return torch.tanh(sc * n) * v / (sc * n)

    x, y = exp0(e * 0.5), exp0(u * 0.5)  # (3, 8, D), (3, D)
    # d_c(x, y) = 2/sqrt(c) artanh(sqrt(c) |(-x) ⊕ y|) with the full Möbius addition, float64
    xe, ye = x[:, :, None, :], y[None, None, :, :]
    xy = (-xe * ye).sum(-1, keepdim=True)
    x2, y2 = (xe * xe).sum(-1, keepdim=True), (ye * ye).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * (-xe) + (1 - c * x2) * ye
    den = 1 + 2 * c * xy + c * c * x2 * y2
    d = 2 / sc * torch.atanh(sc * (num / den).norm(dim=-1))  # (3, 8, 3)
    s = (-d).max(dim=1).values
    temp = float(m.head.temperature())
    torch.testing.assert_close(out.similarity.double(), s, rtol=1e-4, atol=1e-5)
    ref = (_smoothed_ce(s / temp, 0.1) + _smoothed_ce(s.t() / temp, 0.1)) / 2
    assert abs(float(out.loss) - float(ref)) < 1e-3 * max(1.0, float(ref))
    assert out.loss_itm is None


def test_itc_loss_function_matches_reference():
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = itc_loss(logits, logits.t(), 0.1)
    ref = (_smoothed_ce(logits, 0.1) + _smoothed_ce(logits.t(), 0.1)) / 2
    assert abs(float(got) - float(ref)) < 1e-6


def test_hard_negatives_follow_blip2_rule():
    sim = torch.full((5, 5), -20.0)
    sim.fill_diagonal_(30.0)
    hard = torch.tensor([3, 0, 4, 1, 2])
    sim[torch.arange(5), hard] = 25.0  # the hardest negative dominates the softmax without the positive
    neg_t, neg_i = sample_hard_negatives(sim, sim.t(), torch.Generator().manual_seed(0))
    assert torch.equal(neg_t, hard)
    assert torch.equal(neg_i, torch.argsort(hard))  # column j's hardest row
    # uniform similarities: each negative is uniform over the 4 others (never the positive)
    counts = torch.zeros(4, 4)
    g = torch.Generator().manual_seed(1)
    for _ in range(2000):
        nt, _ = sample_hard_negatives(torch.zeros(4, 4), torch.zeros(4, 4), g)
        assert bool((nt != torch.arange(4)).all())
        counts[torch.arange(4), nt] += 1
    off = counts[~torch.eye(4, dtype=torch.bool)] / 2000
    assert float((off - 1 / 3).abs().max()) < 0.05


def test_training_mode_applies_rtp_and_rqs(model):
    px, ids, mask = _batch(4)
    model.train()
    torch.manual_seed(0)
    out = model(pixel_values=px, input_ids=ids, attention_mask=mask, return_loss=True)
    model.eval()
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.head.log_alpha_image.grad is not None or model.head.temp.grad is not None
    assert model.base.vision_model.embeddings.patch_embedding.weight.grad is None  # frozen ViT (stage 1)
    assert not model.base.vision_model.embeddings.patch_embedding.weight.requires_grad
    assert model.base.qformer.encoder.layer[0].attention.attention.query.weight.grad is not None
    model.zero_grad(set_to_none=True)


# -- bad input -------------------------------------------------------------------------------------------------
def test_bad_input_raises_value_error(model):
    px, ids, mask = _batch(4)
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=px, input_ids=ids[:3], attention_mask=mask[:3], return_loss=True)
    bad = ids.clone()
    bad[1] = torch.tensor([2, 3, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=px, input_ids=bad, attention_mask=(bad != 0).long())
    nan_px = px.clone()
    nan_px[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=nan_px, input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask"):
        model(pixel_values=px, input_ids=ids, attention_mask=mask[:, :3])
    with pytest.raises(ValueError, match="pixel_values"):
        model.uncertainty(px[0])


# -- attach / detach ------------------------------------------------------------------------------------------
def test_attach_hooks_then_remove_is_bit_identical():
    base = build_from_preset("tiny-blip2-retrieval")
    px, ids, mask = _batch(3)
    with torch.no_grad():
        before = base(pixel_values=px, input_ids=ids, attention_mask=mask)
        before_itm = base(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
    handle = attach_hyperbolic_head(base, curvature=1.0)
    with torch.no_grad():
        hooked = base(pixel_values=px, input_ids=ids, attention_mask=mask)
        hooked_itm = base(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
    assert hooked.image_embeds.shape == (3, 8, 32) and hooked.image_radius.shape == (3, 8)
    assert float((hooked.image_embeds.norm(dim=-1)).max()) < 1.0
    torch.testing.assert_close(hooked.logits_per_image, before.logits_per_image, rtol=1e-5, atol=1e-6)
    assert torch.equal(hooked_itm.logits_per_image, before_itm.logits_per_image)
    e, u, _ = _projections(base, px, ids, mask)
    torch.testing.assert_close(hooked.text_radius.double(), 2 * u.norm(dim=-1) / math.sqrt(32), rtol=1e-5, atol=0)
    handle.remove()
    handle.remove()  # idempotent
    with torch.no_grad():
        after = base(pixel_values=px, input_ids=ids, attention_mask=mask)
    assert set(after.keys()) == set(before.keys())
    for k in before.keys():
        a, b = before[k], after[k]
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), k
    assert "image_radius" not in after


# -- checkpoints and hub -------------------------------------------------------------------------------------
def test_save_load_roundtrip_and_auto(model, tmp_path):
    from transformers import AutoConfig, AutoModel

    with torch.no_grad():
        model.head.log_alpha_text.fill_(-1.0)
        model.base.text_projection.bias.add_(0.5)  # a "trained" Q-Former tensor must be saved too
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "head.log_alpha_text" in keys and "base.text_projection.bias" in keys
    # only the head and the listed trained base modules are saved (the default list leaves the frozen ViT out)
    allowed = ("head.",) + tuple(f"base.{m}" for m in model.config.trained_base_modules)
    assert all(k.startswith(allowed) for k in keys)
    assert set(keys) == set(model.head_state_dict())
    assert "vision_model" not in HyperbolicBlip2Config().trained_base_modules
    card = (tmp_path / "README.md").read_text()
    assert "library_name: vlplugins" in card and "2408.05097" in card
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hyperbolic_blip2"
    for loaded in (HyperbolicBlip2ForImageTextRetrieval.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, HyperbolicBlip2ForImageTextRetrieval)
        px, ids, mask = _batch(2)
        model.eval()
        with torch.no_grad():
            a = model(pixel_values=px, input_ids=ids, attention_mask=mask)
            b = loaded(pixel_values=px, input_ids=ids, attention_mask=mask)
        assert torch.equal(a.logits_per_image, b.logits_per_image)
        assert torch.equal(a.text_radius, b.text_radius) and torch.equal(a.image_radius, b.image_radius)
    with torch.no_grad():
        model.head.reset_parameters()
        model.base.text_projection.bias.sub_(0.5)


def test_push_to_hub_uploads_head_only_folder(model, fake_hub):
    assert model.push_to_hub("user/hyp-blip2") == "commit-url"
    assert fake_hub.upload_repo_id == "user/hyp-blip2"
    assert sorted(fake_hub.files) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(fake_hub.text("config.json"))["base_model_name_or_path"] == PRESET


def test_uncertainty_is_mean_query_radius(model):
    px, ids, mask = _batch(3)
    with torch.no_grad():
        out = model(pixel_values=px, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(model.uncertainty(px), out.image_radius.mean(1))
    torch.testing.assert_close(model.uncertainty(px, reduction="none"), out.image_radius)
    torch.testing.assert_close(model.uncertainty(px, reduction="max"), out.image_radius.max(1).values)


# -- retrieval evaluation -------------------------------------------------------------------------------------
def test_retrieval_ranks_against_argsort_reference():
    g = torch.Generator().manual_seed(0)
    num_images, per = 30, 5
    sim = torch.randn(num_images, num_images * per, generator=g)
    text_image_ids = torch.arange(num_images).repeat_interleave(per)
    tr, ir = retrieval_ranks(sim, text_image_ids, chunk_size=7)
    for i in range(num_images):  # LAVIS: rank of the best ground-truth caption in the sorted list
        order = torch.argsort(sim[i], descending=True).tolist()
        assert tr[i] == min(order.index(t) for t in range(i * per, (i + 1) * per))
    for t in range(num_images * per):
        order = torch.argsort(sim[:, t], descending=True).tolist()
        assert ir[t] == order.index(int(text_image_ids[t]))
    rec = recall_at_k(tr, ir)
    assert rec["txt_r1"] == 100.0 * float((tr == 0).float().mean())
    assert rec["img_r10"] == 100.0 * float((ir < 10).float().mean())
    assert math.isclose(rec["r_mean"], (rec["txt_r_mean"] + rec["img_r_mean"]) / 2)


def test_itm_rerank_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 9, generator=g)
    itm_table = torch.randn(6, 9, generator=g)
    got_i2t, got_t2i = itm_rerank(sim, 3, lambda i, t: itm_table[i, t])
    ref_i2t = torch.full((6, 9), -100.0)
    for i in range(6):
        for t in torch.topk(sim[i], 3).indices.tolist():
            ref_i2t[i, t] = itm_table[i, t] + sim[i, t]
    ref_t2i = torch.full((9, 6), -100.0)
    for t in range(9):
        for i in torch.topk(sim[:, t], 3).indices.tolist():
            ref_t2i[t, i] = itm_table[i, t] + sim[i, t]
    assert torch.equal(got_i2t, ref_i2t) and torch.equal(got_t2i, ref_t2i)


def test_coco_karpathy_reader_both_layouts(tmp_path):
    lavis_rows = [{"image": "val2014/a.jpg", "caption": ["x one", "x two"], "image_id": "1"},
                  {"image": "val2014/b.jpg", "caption": "y one", "image_id": "2"},
                  {"image": "val2014/b.jpg", "caption": "y two", "image_id": "2"}]
    (tmp_path / "l.json").write_text(json.dumps(lavis_rows))
    items = read_coco_karpathy(tmp_path / "l.json", "/root")
    assert [(i.image_path, i.captions) for i in items] == [("/root/val2014/a.jpg", ["x one", "x two"]),
                                                          ("/root/val2014/b.jpg", ["y one", "y two"])]
    karpathy = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "cocoid": 1, "sentences": [{"raw": "A. "}]},
        {"filepath": "train2014", "filename": "c.jpg", "split": "restval", "cocoid": 3, "sentences": [{"raw": "C"}]}]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    assert [i.captions for i in read_coco_karpathy(tmp_path / "k.json", split="test")] == [["A."]]
    assert [i.image_path for i in read_coco_karpathy(tmp_path / "k.json", split="train")] == ["train2014/c.jpg"]
    (tmp_path / "bad.json").write_text(json.dumps([{"file": "x"}]))
    with pytest.raises(ValueError, match="json_path"):
        read_coco_karpathy(tmp_path / "bad.json")


# -- PEFT -----------------------------------------------------------------------------------------------------
def test_peft_lora_on_qformer_one_step_and_adapter_roundtrip(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    model = HyperbolicBlip2ForImageTextRetrieval.from_base(PRESET, use_itm=True)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=r".*qformer\.encoder\.layer\.\d+\.(attention|crossattention)\.attention\.(query|value)")
    peft_model = get_peft_model(model, lora)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * 2 * 2 * 2  # layers x {self, cross} x {query, value} x {A, B}
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    px, ids, mask = _batch(4)
    peft_model.train()
    torch.manual_seed(0)
    out = peft_model(pixel_values=px, input_ids=ids, attention_mask=mask, return_loss=True)
    out.loss.backward()
    opt.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= set(names)
    assert any("lora_B" in n for n in changed)
    peft_model.eval()
    with torch.no_grad():
        ref = peft_model(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    torch.manual_seed(0)
    fresh = HyperbolicBlip2ForImageTextRetrieval.from_base(PRESET, use_itm=True)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(pixel_values=px, input_ids=ids, attention_mask=mask).logits_per_image
    assert torch.equal(got, ref)


# -- CLI: Trainer training, evaluation, histogram -----------------------------------------------------------
def _write_coco(tmp_path, n_images, split_name, seed_offset=0):
    from vlplugins.data import ShapesWorld, render

    world = ShapesWorld(32, seed=0)
    (tmp_path / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(n_images):
        scene = world.scene(seed_offset + i)
        name = f"images/{split_name}_{i}.png"
        render(scene).save(tmp_path / name)
        rows.append({"image": name, "caption": [world.caption(scene, 3), world.caption(scene, 4)],
                     "image_id": str(i)})
    path = tmp_path / f"coco_karpathy_{split_name}.json"
    path.write_text(json.dumps(rows))
    return path


def test_cli_train_eval_histogram(tmp_path, capsys):
    from PIL import Image

    from vlplugins.cli import main

    train_json = _write_coco(tmp_path, 8, "train")
    test_json = _write_coco(tmp_path, 6, "test", seed_offset=500)
    out_dir = tmp_path / "run"
    common = ["--image-root", str(tmp_path), "--tokenizer", "shapes", "--mean", "0.5", "0.5", "0.5",
              "--std", "0.5", "0.5", "0.5"]
    assert main(["hyperbolic-blip2", "train", "--ann-json", str(train_json), *common, "--base", PRESET,
                 "--output-dir", str(out_dir), "--batch-size", "4", "--max-steps", "2", "--lr", "1e-3",
                 "--logging-steps", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and math.isfinite(summary["train_loss"])
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file()
    trained = HyperbolicBlip2ForImageTextRetrieval.from_pretrained(out_dir)
    fresh = HyperbolicBlip2ForImageTextRetrieval.from_base(PRESET)
    assert not torch.equal(trained.base.text_projection.weight, fresh.base.text_projection.weight)

    assert main(["hyperbolic-blip2", "eval-retrieval", "--ann-json", str(test_json), *common,
                 "--model", str(out_dir), "--k-test", "4", "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10"}
    assert metrics["txt_r10"] == 100.0 and metrics["img_r10"] == 100.0  # 6 images / 12 captions, k >= 6
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    capsys.readouterr()

    png = tmp_path / "radius.png"
    assert main(["hyperbolic-blip2", "radius-histogram", "--ann-json", str(test_json), *common,
                 "--model", str(out_dir), "--output", str(png)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["num_images"] == 6 and info["num_texts"] == 12
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
