"""CReaL head: formulas against a float64 re-implementation, losses, save/reload, push, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel

import vlplugins  # noqa: F401
from vlplugins.creal import (CReaLConfig, CReaLForRelationPrediction, LinearRelationPredictor,
                             inverse_frequency_weights, pair_box_features, predicate_text_embeddings,
                             prototype_regularizer, prototype_triplet_loss)

TINY = dict(num_object_classes=13, num_predicate_classes=8, entity_dim=24, union_dim=20, hidden_size=16,
            complex_dim=8, embed_dim=12, label_embed_dim=6, geometry_dim=10, dropout=0.0, prototype_text_dim=32)


def _inputs(r=7, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(r, 2, 2, generator=g) * 20
    wh = torch.rand(r, 2, 2, generator=g) * 10 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=-1).reshape(r, 8)  # inside 30 x 30
    out = dict(subject_features=torch.randn(r, 24, generator=g), object_features=torch.randn(r, 24, generator=g),
               union_features=torch.randn(r, 20, generator=g), pair_boxes=boxes,
               subject_labels=torch.randint(1, 13, (r,), generator=g),
               object_labels=torch.randint(1, 13, (r,), generator=g), image_sizes=(32.0, 30.0))
    if labels:
        out["labels"] = torch.tensor([0, 1, 2, 3, 4, 5, 7][:r])
    return out


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return CReaLForRelationPrediction(CReaLConfig(**{**TINY, **overrides})).eval()


def _reference_forward(m, x):
    """The spec's formulas in float64, reading the weights by name (independent of the module code)."""
    sd = {k: v.double() for k, v in m.state_dict().items()}

    def lin(name, t):
        return t @ sd[name + ".weight"].t() + sd[name + ".bias"]

    def mlp(name, t):
        return lin(name + ".3", torch.relu(lin(name + ".0", t)))

    xs, xo, xu = (x[k].double() for k in ("subject_features", "object_features", "union_features"))
    es, eo = sd["subject_label_embed.weight"][x["subject_labels"]], sd["object_label_embed.weight"][x["object_labels"]]
    hs, ho = mlp("subject_visual", xs), mlp("object_visual", xo)
    s = lin("subject_label_proj", es) + torch.sigmoid(lin("subject_gate", torch.cat([es, hs], 1))) * hs
    o = lin("object_label_proj", eo) + torch.sigmoid(lin("object_gate", torch.cat([eo, ho], 1))) * ho
    fso = torch.relu(s + o) - (s - o) ** 2
    hu = mlp("union_visual", xu)
    w, h = x["image_sizes"]
    pb = x["pair_boxes"].double() / torch.tensor([w, h, w, h, w, h, w, h], dtype=torch.float64)
    feats = []
    for row in pb.tolist():
        sx1, sy1, sx2, sy2, ox1, oy1, ox2, oy2 = row
        sw, sh, ow, oh = sx2 - sx1, sy2 - sy1, ox2 - ox1, oy2 - oy1
        dx, dy = (ox1 + ox2 - sx1 - sx2) / 2, (oy1 + oy2 - sy1 - sy2) / 2
        inter = max(0.0, min(sx2, ox2) - max(sx1, ox1)) * max(0.0, min(sy2, oy2) - max(sy1, oy1))
        union_area = (max(sx2, ox2) - min(sx1, ox1)) * (max(sy2, oy2) - min(sy1, oy1))
        feats.append(row + [dx, dy, math.log(ow / sw), math.log(oh / sh), inter / (sw * sh), inter / (ow * oh),
                            math.hypot(dx, dy), union_area])
    u = torch.sigmoid(lin("union_gate", torch.cat([fso, hu], 1))) * hu + mlp("geometry", torch.tensor(feats,
                                                                                                     dtype=torch.float64))
    dc = m.config.complex_dim
    z, uc = lin("pair_to_complex", fso), lin("union_to_complex", u)
    zc = torch.complex(z[:, :dc], z[:, dc:])
    ucc = torch.complex(uc[:, :dc], uc[:, dc:])
    r = zc * ucc  # complex Hadamard product
    r = r / torch.sqrt((r.abs() ** 2).sum(-1, keepdim=True))
    amp = r.abs() ** 2
    phi = torch.atan2(r.imag, r.real)
    v_a = lin("amplitude_proj", torch.cat([r.real, r.imag, amp], 1))
    v_p = lin("phase_proj", torch.cat([v_a, torch.sin(phi), torch.cos(phi)], 1))
    alpha = torch.sigmoid(lin("gate_proj", torch.cat([v_a, v_p], 1)))
    pa, pp = sd["amp_prototypes"], sd["phase_prototypes"]
    cos_a = F.normalize(v_a, dim=-1) @ F.normalize(pa, dim=-1).t()
    cos_p = F.normalize(v_p, dim=-1) @ F.normalize(pp, dim=-1).t()
    logits = alpha * cos_a / sd["log_tau_a"].exp() + (1 - alpha) * cos_p / sd["log_tau_p"].exp()
    return logits, alpha.squeeze(-1), F.normalize(v_a, dim=-1), F.normalize(v_p, dim=-1), torch.cat(
        [r.real, r.imag], 1)


def test_forward_matches_float64_reference_of_the_spec():
    m = _model()
    x = _inputs()
    with torch.no_grad():
        out = m(**x)
    logits, alpha, va, vp, rel = _reference_forward(m, x)
    assert out.logits.shape == (7, 8) and out.gate.shape == (7,)
    # tolerance: float32 vs float64, plus the 1e-4 phase epsilon (relative change of sin/cos < 1e-5 here)
    torch.testing.assert_close(out.logits.double(), logits, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(out.gate.double(), alpha, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.amplitude_embeds.double(), va, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.phase_embeds.double(), vp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.relation_embeds.double(), rel, rtol=1e-4, atol=1e-6)
    assert torch.allclose(out.relation_embeds.norm(dim=-1), torch.ones(7), atol=1e-6)
    # the gate mixes the two branch logits exactly
    mix = out.gate[:, None] * out.amplitude_logits + (1 - out.gate[:, None]) * out.phase_logits
    torch.testing.assert_close(out.logits, mix)
    # initial temperatures are 0.07
    assert [float(t.detach()) for t in m.temperatures()] == pytest.approx([0.07, 0.07])


def test_default_head_adds_about_11m_parameters_at_4096d():
    n = sum(p.numel() for p in CReaLForRelationPrediction(CReaLConfig()).parameters())
    assert 10.5e6 < n < 11.5e6


def test_losses_match_hand_computations_and_loop_references():
    # inverse frequency weights, power 1: w ~ [1/6, 1/3, 1], normalised by sum(n w)/sum(n) = 3/10
    w = inverse_frequency_weights([6, 3, 1], power=1.0)
    assert w.tolist() == pytest.approx([1 / 6 / 0.3, 1 / 3 / 0.3, 1 / 0.3])
    g = torch.Generator().manual_seed(1)
    emb, protos = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g,
                                                                                 dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 1, 1])
    for k in (1, 3):
        ref = 0.0
        for i in range(5):
            v = emb[i] / emb[i].norm()
            d = [float(((v - p / p.norm()) ** 2).sum()) for p in protos]
            pos = d[int(labels[i])]
            neg = sorted(d[j] for j in range(6) if j != int(labels[i]))[:k]
            ref += max(0.0, pos - sum(neg) / k + 0.7)
        assert float(prototype_triplet_loss(emb, protos, labels, 0.7, k)) == pytest.approx(ref / 5, rel=1e-5)
    pa, pp = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    l21, margin = prototype_regularizer(pa, pp, gamma_dp=1.5)
    na, npp = F.normalize(pa.double(), dim=-1), F.normalize(pp.double(), dim=-1)
    ref21 = sum(float((na[i] @ na.t()).norm()) + float((npp[i] @ npp.t()).norm()) for i in range(6)) / 36
    refm = sum(max(0.0, 1.5 - min(float(((npp[i] - npp[j]) ** 2).sum()) for j in range(6) if j != i))
               for i in range(6)) / 6
    assert float(l21) == pytest.approx(ref21, rel=1e-5)
    assert float(margin) == pytest.approx(refm, rel=1e-4, abs=1e-6)


def test_loss_terms_weights_switches_and_reweighting():
    x = _inputs()
    m = _model()
    out = m(**x)
    total = out.loss_ce + out.loss_reg + out.loss_amp_triplet + out.loss_phase_triplet
    torch.testing.assert_close(out.loss, total)
    m2 = _model(use_reg_loss=False, amp_triplet_loss_weight=0.5, ce_loss_weight=2.0)
    out2 = m2(**x)
    torch.testing.assert_close(out2.loss, 2 * out2.loss_ce + 0.5 * out2.loss_amp_triplet + out2.loss_phase_triplet)
    freq = [100, 50, 20, 10, 5, 3, 2, 1]
    m3 = _model(loss_reweighting="inverse_frequency", predicate_frequencies=freq, reweight_power=0.5)
    out3 = m3(**x)
    wts = inverse_frequency_weights(freq, 0.5)
    ref = F.cross_entropy(out3.logits.double(), x["labels"], weight=wts.double())
    assert float(out3.loss_ce.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def test_bf16_and_degenerate_inputs_stay_finite():
    m = _model().to(torch.bfloat16)
    x = _inputs()
    x = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in x.items()}
    out = m(**x)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    z = _inputs()
    for k in ("subject_features", "object_features", "union_features"):
        z[k] = torch.zeros_like(z[k])
    z["pair_boxes"] = torch.tensor([[1.0, 1, 1, 1, 1, 1, 1, 1]]).repeat(7, 1)  # zero-area boxes
    m32 = _model()
    out = m32(**z)
    out.loss.backward()
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in m32.parameters() if p.grad is not None)


def test_pair_box_features_hand_values():
    # subject [0,0,10,10], object [5,0,15,20] in a 20 x 20 image
    f = pair_box_features(torch.tensor([[0.0, 0, 10, 10, 5, 0, 15, 20]]), torch.tensor([[20.0, 20.0]]))[0]
    expected = [0, 0, 0.5, 0.5, 0.25, 0, 0.75, 1.0, 0.25, 0.25, math.log(1.0), math.log(2.0), 0.125 / 0.25,
                0.125 / 0.5, math.hypot(0.25, 0.25), 0.75 * 1.0]
    assert f.tolist() == pytest.approx(expected, abs=1e-6)


def test_bad_inputs_raise_value_error_naming_the_argument():
    m = _model()
    x = _inputs()
    cases = [
        ("object_features", dict(object_features=x["object_features"][:5])),
        ("union_features", dict(union_features=torch.randn(7, 21))),
        ("pair_boxes", dict(pair_boxes=x["pair_boxes"][:6])),
        ("subject_labels", dict(subject_labels=x["subject_labels"][:6])),
        ("labels", dict(labels=torch.tensor([0, 1, 2, 3, 4, 5, 8]))),
        ("subject_labels", dict(subject_labels=torch.full((7,), 13))),
        ("object_labels", dict(object_labels=torch.full((7,), -1))),
        ("image_sizes", dict(image_sizes=(32.0, 30.0, 1.0))),
        ("union_features", dict(union_features=torch.full((7, 20), float("nan")))),
    ]
    bad_x = x["pair_boxes"].clone()
    bad_x[2, 2] = bad_x[2, 0] - 1  # subject x2 < x1
    cases.append(("pair_boxes", dict(pair_boxes=bad_x)))
    outside = x["pair_boxes"].clone()
    outside[3, 6] = 40.0  # object x2 beyond the 32-pixel width
    cases.append(("pair_boxes", dict(pair_boxes=outside)))
    for name, change in cases:
        with pytest.raises(ValueError, match=name):
            m(**{**x, **change})
    with pytest.raises(ValueError, match=r"pair_boxes.*normalised to \[0, 1\]"):
        m(**{**x, "image_sizes": None})  # pixel boxes without image sizes
    with pytest.raises(ValueError, match="gamma_dp"):
        CReaLConfig(gamma_dp=5.0)
    with pytest.raises(ValueError, match="predicate_frequencies"):
        CReaLConfig(loss_reweighting="inverse_frequency")
    with pytest.raises(ValueError, match="prototype_init"):
        CReaLConfig(prototype_init="glove")
    with pytest.raises(ValueError, match="pair_boxes"):
        LinearRelationPredictor(CReaLConfig(**TINY))(**{**x, "pair_boxes": outside})


def test_save_pretrained_and_automodel_reload_round_trip(tmp_path):
    m = _model()
    x = _inputs(labels=False)
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert AutoConfig.from_pretrained(tmp_path).model_type == "creal"
    card = (tmp_path / "README.md").read_text()
    assert "library_name: vlplugins" in card and "CReaL" in card
    re = AutoModel.from_pretrained(tmp_path)
    assert type(re) is CReaLForRelationPrediction
    with torch.no_grad():
        # identical weights; 1-ulp differences can come from the (R, 1) gate matmul's kernel path on differently
        # aligned storage, hence a 1e-6 tolerance instead of bit equality
        torch.testing.assert_close(m(**x).logits, re(**x).logits, rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), re.state_dict().values()))


def test_text_prototypes_from_clip_text_tower_survive_save_and_reload(tmp_path):
    from vlplugins.data import PREDICATES
    from vlplugins.hub import build_from_preset

    clip = build_from_preset("tiny-clip")
    text = predicate_text_embeddings(PREDICATES, clip)
    assert text.shape == (8, 32)
    # independent: CLIP text features of "left of" equal row 1
    from vlplugins.hub.tokenizers import clip_tokenizer

    enc = clip_tokenizer()(["left of"], return_tensors="pt")
    with torch.no_grad():
        feat = clip.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    feat = feat if torch.is_tensor(feat) else feat.pooler_output
    torch.testing.assert_close(text[1], feat[0].float(), rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    m = CReaLForRelationPrediction(CReaLConfig(**{**TINY, "prototype_init": "text"}), predicate_text_embeds=text)
    pa, _ = m.prototypes()
    assert pa.shape == (8, 12)
    torch.testing.assert_close(pa, m.amp_prototype_mlp(text))
    m.save_pretrained(tmp_path)
    re = AutoModel.from_pretrained(tmp_path)
    assert torch.equal(re.predicate_text_embeds, text)
    x = _inputs(labels=False)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(**x).logits, re(**x).logits, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="predicate_text_embeds"):
        CReaLForRelationPrediction(CReaLConfig(**{**TINY, "prototype_init": "text"}), torch.zeros(8, 5))


def test_push_to_hub_uploads_our_card(fake_hub):
    assert _model().push_to_hub("user/creal-vg150") == "commit-url"
    assert fake_hub.upload_repo_id == "user/creal-vg150"
    assert sorted(fake_hub.files) == ["README.md", "config.json", "model.safetensors"]
    assert "library_name: vlplugins" in fake_hub.text("README.md")


def test_reweighted_model_reloads_with_its_class_weights(tmp_path):
    freq = [100, 50, 20, 10, 5, 3, 2, 1]
    m = _model(loss_reweighting="inverse_frequency", predicate_frequencies=freq, num_hard_negatives=3)
    m.save_pretrained(tmp_path)
    re = AutoModel.from_pretrained(tmp_path)  # built on the meta device, then loaded
    assert re.config.num_hard_negatives == 3
    torch.testing.assert_close(re.class_weights(), inverse_frequency_weights(freq, 0.5))
    x = _inputs()
    with torch.no_grad():
        a, b = m(**x), re(**x)
    torch.testing.assert_close(a.loss_ce, b.loss_ce, rtol=0, atol=1e-6)
    assert _model().class_weights() is None


def test_forward_image_equals_forward_on_gathered_pairs():
    m = _model()
    g = torch.Generator().manual_seed(3)
    n = 5
    feats = torch.randn(n, 24, generator=g)
    xy = torch.rand(n, 2, generator=g) * 20
    boxes = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 9], dim=1)
    lab = torch.randint(1, 13, (n,), generator=g)
    pairs = torch.tensor([(i, j) for i in range(n) for j in range(n) if i != j])
    union = torch.randn(len(pairs), 20, generator=g)
    rel_labels = torch.randint(0, 8, (len(pairs),), generator=g)
    with torch.no_grad():
        a = m.forward_image(feats, union, pairs, boxes=boxes, object_labels=lab, image_size=(32.0, 32.0),
                            labels=rel_labels)
        b = m(feats[pairs[:, 0]], feats[pairs[:, 1]], union, pair_boxes=torch.cat([boxes[pairs[:, 0]],
                                                                                   boxes[pairs[:, 1]]], 1),
              subject_labels=lab[pairs[:, 0]], object_labels=lab[pairs[:, 1]], image_sizes=(32.0, 32.0),
              labels=rel_labels)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rel_pairs"):
        m.forward_image(feats, union, pairs + 1, boxes=boxes, object_labels=lab, image_size=(32.0, 32.0))
    with pytest.raises(ValueError, match="boxes"):
        m.forward_image(feats, union, pairs, boxes=boxes[:4], object_labels=lab, image_size=(32.0, 32.0))
