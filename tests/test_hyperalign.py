"""HyperAlign model: identity calibration, float64 reference of the head, backbones, reward API, checkpoints."""

from __future__ import annotations

import math
from concurrent import futures

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlplugins.data import ShapesWorld
from vlplugins.hyperalign import HyperAlignConfig, HyperAlignModel
from vlplugins.hyperalign.losses import entailment_loss
from vlplugins.hyperalign.training import parameter_groups


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HyperAlignModel.from_clip("preset:tiny-clip")


@pytest.fixture(scope="module")
def oc_model():
    torch.manual_seed(0)
    return HyperAlignModel.from_open_clip("preset:tiny-open-clip")


@pytest.fixture(scope="module")
def pairs():
    world = ShapesWorld(image_size=32, seed=0)
    ps = [world.alignment_pair(i) for i in range(12)]
    return [p["image"] for p in ps], [p["prompt"] for p in ps], [p["score"] for p in ps]


def _randomise_regressor(m: HyperAlignModel, seed: int = 1) -> HyperAlignModel:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.regressor.out.weight.copy_(0.3 * torch.randn(m.regressor.out.weight.shape, generator=g))
        m.regressor.out.bias.copy_(0.2 * torch.randn(3, generator=g))
        m.regressor.standardize.running_mean.copy_(torch.tensor([1.5, 2.0, 0.3]))
        m.regressor.standardize.running_var.copy_(torch.tensor([0.4, 0.2, 0.05]))
        for ad in (m.adapter_image, m.adapter_text):
            ad.gate.fill_(0.5)
    return m


# ---------------------------------------------------------------------------------------------- config
def test_config_validation_and_roundtrip(tmp_path):
    with pytest.raises(ValueError, match="entail_mode"):
        HyperAlignConfig(entail_mode="cone")
    with pytest.raises(ValueError, match="backbone"):
        HyperAlignConfig(backbone="timm")
    with pytest.raises(ValueError, match="alpha_init"):
        HyperAlignConfig(alpha_init=1.5)
    with pytest.raises(ValueError, match="min_radius"):
        HyperAlignConfig(min_radius=0.0)
    cfg = HyperAlignConfig(entail_mode="meru", lambda_ent=0.2, learn_curv=True, regressor_hidden=(8, 4))
    cfg.save_pretrained(tmp_path)
    back = HyperAlignConfig.from_pretrained(tmp_path)
    assert back.model_type == "hyperalign"
    assert (back.entail_mode, back.lambda_ent, back.learn_curv, back.regressor_hidden) == ("meru", 0.2, True, [8, 4])
    assert (back.cone_alpha, back.min_radius, back.alpha_max, back.adapter_reduction) == (0.8, 0.1, 1.0, 4)


# ---------------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("which", ["model", "oc_model"])
def test_initial_score_equals_cosine_exactly(which, request, pairs):
    m = request.getfixturevalue(which)
    images, prompts, _ = pairs
    out = m.score(images, prompts, return_details=True)
    assert torch.equal(out["scores"], out["cosine"])
    assert torch.equal(out["a"], torch.ones(12)) and torch.equal(out["g"], torch.ones(12))
    assert torch.equal(out["b"], torch.zeros(12))
    # and the cosine is that of the adapter outputs on the raw CLIP embeddings
    inputs = m.prepare_inputs(images, prompts)
    with torch.no_grad():
        fi = m.adapter_image(m.encode_image(inputs["pixel_values"]))
        ft = m.adapter_text(m.encode_text(inputs["input_ids"], inputs["attention_mask"]))
    torch.testing.assert_close(out["cosine"], F.cosine_similarity(fi, ft, dim=-1), rtol=0, atol=1e-6)


def test_alpha_and_adapter_init(model):
    D = model.config.embed_dim
    ai, at = (s.detach() for s in model.feature_scales())
    assert math.isclose(float(ai), D ** -0.5, rel_tol=1e-6) and math.isclose(float(at), D ** -0.5, rel_tol=1e-6)
    assert model.adapter_image.down.out_features == D // 4
    assert math.isclose(float(torch.sigmoid(model.adapter_image.gate.detach())), 1 / (1 + math.exp(4.0)), rel_tol=1e-6)
    assert not any(p.requires_grad for p in model.clip.parameters())


# ---------------------------------------------------------------------------------------------- float64 reference
def _minkowski(u, v):
    return -u[..., 0] * v[..., 0] + (u[..., 1:] * v[..., 1:]).sum(-1)


def _reference_head(m: HyperAlignModel, xi: torch.Tensor, xt: torch.Tensor, labels: torch.Tensor):
    """Independent float64 implementation with full (time, space) hyperboloid coordinates, c = 1."""
    d = torch.float64
    W = {k: v.detach().to(d) for k, v in m.named_parameters() if not k.startswith("clip.")}
    S = {k: v.detach().to(d) for k, v in m.named_buffers() if k.startswith("regressor")}

    def adapter(x, p):
        h = F.gelu(x @ W[f"{p}.down.weight"].T + W[f"{p}.down.bias"])
        return x + torch.sigmoid(W[f"{p}.gate"]) * (h @ W[f"{p}.up.weight"].T + W[f"{p}.up.bias"])

    fi, ft = adapter(xi.to(d), "adapter_image"), adapter(xt.to(d), "adapter_text")
    cos = (fi * ft).sum(-1) / (fi.norm(dim=-1) * ft.norm(dim=-1))

    def expmap(v):  # full hyperboloid point from a tangent vector at the origin (c = 1)
        r = v.norm(dim=-1, keepdim=True)
        return torch.cat([torch.cosh(r), torch.sinh(r) * v / r], dim=-1)

    P = expmap(torch.sigmoid(W["alpha0_image"]) * fi)
    T = expmap(torch.sigmoid(W["alpha0_text"]) * ft)
    O = torch.zeros_like(T)
    O[:, 0] = 1.0
    d_l = torch.acosh(-_minkowski(T, P))

    def log_at(x, y):  # log map at x of y on the hyperboloid
        ip = _minkowski(x, y)[:, None]
        u = y + ip * x
        return torch.acosh(-ip) * u / _minkowski(u, u).clamp_min(0).sqrt()[:, None]

    u, v = log_at(T, O), log_at(T, P)
    interior = torch.acos(_minkowski(u, v) / (_minkowski(u, u).sqrt() * _minkowski(v, v).sqrt()))
    phi = math.pi - interior  # exterior angle at the text point
    delta = torch.asin(2 * m.config.min_radius / T[:, 1:].norm(dim=-1))
    z = torch.stack([d_l, phi, delta], -1)
    z = (z - S["regressor.standardize.running_mean"]) / torch.sqrt(S["regressor.standardize.running_var"] + 1e-5)
    h = z
    for i in (0, 2):
        h = F.gelu(h @ W[f"regressor.mlp.{i}.weight"].T + W[f"regressor.mlp.{i}.bias"])
    o = h @ W["regressor.out.weight"].T + W["regressor.out.bias"]
    a, b, g = F.softplus(o[:, 0]) / math.log(2), o[:, 1], F.softplus(o[:, 2]) / math.log(2)
    score = g * (a * cos + b)
    s = labels.to(d)
    ent = (s * torch.relu(phi - 0.8 * delta)).mean()
    loss = ((score - s) ** 2).mean() + m.config.lambda_ent * ent
    return dict(scores=score, cosine=cos, d_L=d_l, phi=phi, delta=delta, a=a, b=b, g=g, loss=loss)


def test_head_matches_float64_reference():
    torch.manual_seed(0)
    m = _randomise_regressor(HyperAlignModel.from_clip("preset:tiny-clip", lambda_ent=0.7)).eval()
    g = torch.Generator().manual_seed(3)
    xi = 3.0 * torch.randn(16, 32, generator=g)
    xt = 3.0 * torch.randn(16, 32, generator=g)
    labels = torch.rand(16, generator=g)
    out = m(image_embeds=xi, text_embeds=xt, labels=labels)
    ref = _reference_head(m, xi, xt, labels)
    for k, v in ref.items():
        torch.testing.assert_close(getattr(out, k).double(), v, rtol=2e-5, atol=2e-5, msg=k)
    assert float(ref["b"].abs().min()) > 0 and float((ref["a"] - 1).abs().min()) > 0  # non-trivial calibration


def test_entailment_modes_and_total_loss():
    phi = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    delta = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    s = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64)
    # score_weighted: s * relu(phi - 0.8 delta) = [0, .5*.1, .25*.6, 0]
    assert math.isclose(float(entailment_loss(phi, delta, s, "score_weighted")), (0.05 + 0.15) / 4, rel_tol=1e-12)
    # scaled aperture: relu(phi - 0.8 * delta * (1 - s + 0.1)) -> apertures [.04, .24, .34, .44]
    want = (0.06 + 0.26 + 0.66 + 1.56) / 4
    assert math.isclose(float(entailment_loss(phi, delta, s, "scaled_aperture")), want, rel_tol=1e-12)
    assert math.isclose(float(entailment_loss(phi, delta, s, "meru")), (0 + 0 + 0.5 + 1.5) / 4, rel_tol=1e-12)
    # hinge is exactly zero inside the shrunk cone
    assert float(entailment_loss(torch.tensor([0.39]), torch.tensor([0.5]), torch.tensor([1.0]))) == 0.0
    with pytest.raises(ValueError, match="mode"):
        entailment_loss(phi, delta, s, "other")


@pytest.mark.parametrize("mode", ["scaled_aperture", "meru"])
def test_config_selects_entailment_mode(mode):
    torch.manual_seed(0)
    m = HyperAlignModel.from_clip("preset:tiny-clip", entail_mode=mode, lambda_ent=0.5)
    g = torch.Generator().manual_seed(0)
    xi, xt, y = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g), torch.rand(6, generator=g)
    out = m(image_embeds=xi, text_embeds=xt, labels=y)
    want = entailment_loss(out.phi, out.delta, y, mode, 0.8, 0.1)
    assert torch.equal(out.loss_ent, want)
    assert torch.equal(out.loss, out.loss_reg + 0.5 * out.loss_ent)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_finite_grads(dtype):
    torch.manual_seed(0)
    m = _randomise_regressor(HyperAlignModel.from_clip("preset:tiny-clip", learn_curv=True)).train()
    g = torch.Generator().manual_seed(0)
    # large norms push points far out (sinh cap) and identical pairs hit the d = 0 / angle corner cases
    xi = torch.cat([40 * torch.randn(4, 32, generator=g), torch.ones(2, 32)]).to(dtype)
    xt = torch.cat([40 * torch.randn(4, 32, generator=g), torch.ones(2, 32)]).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(image_embeds=xi, text_embeds=xt, labels=torch.rand(6, generator=g))
    out.loss.backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for k in ("scores", "d_L", "phi", "delta"):
        assert torch.isfinite(getattr(out, k)).all(), k
    assert m.log_curv.grad is not None and float(m.log_curv.grad.abs()) > 0


def test_curvature_clamp(model):
    m = HyperAlignModel(HyperAlignConfig(curv_init=2.0, learn_curv=True), base_model=model.clip)
    with torch.no_grad():
        m.log_curv.fill_(10.0)
    assert math.isclose(float(m.curvature().detach()), 20.0, rel_tol=1e-6)
    with torch.no_grad():
        m.log_curv.fill_(-10.0)
    assert math.isclose(float(m.curvature().detach()), 0.2, rel_tol=1e-6)


def test_parameter_groups(model):
    m = HyperAlignModel(HyperAlignConfig(learn_curv=True), base_model=model.clip)
    groups = parameter_groups(m, lr=1e-4, weight_decay=1e-4, scalar_lr=1e-3)
    names = {id(p): n for n, p in m.named_parameters()}
    scal = sorted(names[id(p)] for p in groups[1]["params"])
    assert scal == ["adapter_image.gate", "adapter_text.gate", "alpha0_image", "alpha0_text", "log_curv"]
    assert (groups[1]["lr"], groups[1]["weight_decay"], groups[0]["lr"], groups[0]["weight_decay"]) == (
        1e-3, 0.0, 1e-4, 1e-4)
    all_ids = {id(p) for g in groups for p in g["params"]}
    assert all_ids == {id(p) for n, p in m.named_parameters() if not n.startswith("clip.")}


# ---------------------------------------------------------------------------------------------- open_clip
def test_open_clip_backbone_tokens_and_weights(oc_model, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    prompts = ["a red circle above a blue square", "small green triangle"]
    inputs = oc_model.prepare_inputs([np.zeros((32, 32, 3), np.uint8)] * 2, prompts)
    assert torch.equal(inputs["input_ids"], open_clip.tokenize(prompts))
    with torch.no_grad():
        want = oc_model.clip.encode_text(open_clip.tokenize(prompts))
        assert torch.equal(oc_model.encode_text(inputs["input_ids"]), want)
    # a local pretrained checkpoint file is loaded into the preset architecture
    from vlplugins.hub import build_from_preset

    other = build_from_preset("tiny-open-clip", seed=5)
    path = tmp_path / "oc.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    m = HyperAlignModel.from_open_clip("preset:tiny-open-clip", pretrained=str(path))
    assert all(torch.equal(a, b) for a, b in zip(m.clip.state_dict().values(), other.state_dict().values()))
    assert m.config.open_clip_pretrained == str(path)


# ---------------------------------------------------------------------------------------------- reward API
def test_score_input_types_agree(model, pairs, tmp_path):
    images, prompts, _ = pairs
    images, prompts = images[:4], prompts[:4]
    ref = model.score(images, prompts)
    arrays = [np.asarray(im) for im in images]
    tensors = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrays])
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    assert torch.equal(model.score(arrays, prompts), ref)
    assert torch.equal(model.score(np.stack(arrays), prompts), ref)
    assert torch.equal(model.score([str(p) for p in paths], prompts), ref)
    torch.testing.assert_close(model.score(tensors, prompts), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.score((tensors * 255).round().to(torch.uint8), prompts), ref, rtol=0, atol=1e-6)
    # batching does not change results
    torch.testing.assert_close(model.score(images, prompts, batch_size=1), ref, rtol=0, atol=1e-6)
    # larger images are resized + center-cropped to the backbone resolution
    big = [im.resize((96, 64), Image.BICUBIC) for im in images]
    assert model.score(big, prompts).shape == (4,)


def test_score_bad_inputs(model, pairs, tmp_path):
    images, prompts, _ = pairs
    with pytest.raises(ValueError, match=r"images/prompts.*3 images and 2 prompts"):
        model.score(images[:3], prompts[:2])
    with pytest.raises(ValueError, match=r"prompts\[1\].*non-empty"):
        model.score(images[:2], [prompts[0], "   "])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"images\[1\].*broken.png"):
        model.score([images[0], str(bad)], prompts[:2])
    with pytest.raises(ValueError, match=r"images\[1\].*missing.png"):
        model.score([images[0], str(tmp_path / "missing.png")], prompts[:2])
    nan = torch.rand(3, 3, 32, 32)
    nan[2, 1, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"images\[2\].*NaN"):
        model.score(nan, prompts[:3], batch_size=2)
    with pytest.raises(ValueError, match="labels"):
        model(image_embeds=torch.randn(2, 32), text_embeds=torch.randn(2, 32), labels=torch.tensor([0.5, 3.0]))


def test_reward_fn_called_like_trl_ddpo(model, pairs):
    """Mirror trl's ``DDPOTrainer.compute_rewards``: images from the pipeline (``output_type="pt"``: float
    (N, 3, H, W) in [0, 1]), prompts / metadata as tuples from ``zip(*[prompt_fn() ...])``."""
    images, prompts, _ = pairs
    pil = images[:6]
    pipe_images = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in pil]).float() / 255
    prompt_fn_out = [(p, {"idx": i}) for i, p in enumerate(prompts[:6])]
    batch_prompts, prompt_metadata = zip(*prompt_fn_out)
    prompt_image_pairs = [[pipe_images[:3], batch_prompts[:3], prompt_metadata[:3]],
                          [pipe_images[3:], batch_prompts[3:], prompt_metadata[3:]]]
    reward_fn = model.as_reward_fn(batch_size=2)
    rewards = []
    for imgs, prompts_, meta in prompt_image_pairs:  # trl: the synchronous branch, verbatim
        reward, reward_metadata = reward_fn(imgs, prompts_, meta)
        rewards.append((torch.as_tensor(reward, device="cpu"), reward_metadata))
    rewards, rewards_metadata = zip(*rewards)
    rewards = torch.cat(rewards)
    assert rewards.shape == (6,) and rewards.dtype == torch.float32
    torch.testing.assert_close(rewards, model.score(pil, list(batch_prompts)), rtol=0, atol=1e-6)
    assert set(rewards_metadata[0]) == {"cosine", "d_L", "phi", "delta"} and len(rewards_metadata[0]["phi"]) == 3
    # trl's async_reward_computation runs reward_fn in a thread pool: results must not interfere
    with futures.ThreadPoolExecutor(max_workers=2) as ex:
        res = list(ex.map(lambda x: reward_fn(*x), prompt_image_pairs))
    torch.testing.assert_close(torch.cat([r[0] for r in res]), rewards, rtol=0, atol=0)
    import copy

    assert torch.equal(copy.deepcopy(model).score(pil, list(batch_prompts)), model.score(pil, list(batch_prompts)))


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["transformers", "open_clip"])
def test_save_reload_head_only(kind, tmp_path, pairs):
    from safetensors.torch import load_file
    from transformers import AutoModel

    torch.manual_seed(0)
    if kind == "transformers":
        m = HyperAlignModel.from_clip("preset:tiny-clip", learn_curv=True)
    else:
        m = HyperAlignModel.from_open_clip("preset:tiny-open-clip")
    _randomise_regressor(m)
    m.config.eval_table = [["AGIQA-3K SRCC", 0.1234]]
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    state = load_file(str(tmp_path / "model.safetensors"))
    assert not any(k.startswith("clip.") for k in state)
    n_head = sum(v.numel() for k, v in m.head_state_dict().items())
    assert sum(v.numel() for v in state.values()) == n_head
    assert (tmp_path / "model.safetensors").stat().st_size < 4 * n_head + 4096  # float32 head + header only
    card = (tmp_path / "README.md").read_text()
    assert "library_name: vlplugins" in card and "0.1234" in card and "2601.04614" in card
    images, prompts, _ = pairs
    want = m.score(images, prompts)
    back = HyperAlignModel.from_pretrained(tmp_path)
    assert torch.equal(back.score(images, prompts), want)
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, HyperAlignModel) and torch.equal(auto.score(images, prompts), want)


def test_from_pretrained_rejects_mismatched_head(tmp_path, model):
    m = HyperAlignModel(HyperAlignConfig(regressor_hidden=(8,)), base_model=model.clip)
    m.save_pretrained(tmp_path)
    cfg = HyperAlignConfig.from_pretrained(tmp_path)
    cfg.regressor_hidden = [16]
    with pytest.raises(ValueError, match="shape"):
        HyperAlignModel.from_pretrained(tmp_path, config=cfg, base_model=model.clip)


def test_push_to_hub_uploads_head_only(fake_hub, model):
    assert model.push_to_hub("user/hyperalign-test") == "commit-url"
    assert fake_hub.upload_repo_id == "user/hyperalign-test"
    assert sorted(fake_hub.files) == ["README.md", "config.json", "model.safetensors"]
    assert len(fake_hub.files["model.safetensors"]) < 100_000


def test_reload_in_bfloat16_is_finite_and_close(tmp_path, pairs):
    torch.manual_seed(0)
    m = _randomise_regressor(HyperAlignModel.from_clip("preset:tiny-clip"))
    m.save_pretrained(tmp_path)
    images, prompts, _ = pairs
    want = m.score(images, prompts)
    half = HyperAlignModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.adapter_image.down.weight.dtype == torch.bfloat16
    got = half.score(images, prompts)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=0.05)


def test_batched_tensor_path_matches_per_image_path(model, pairs):
    images, prompts, _ = pairs
    t = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images[:5]]).float() / 255
    big = F.interpolate(t, size=(48, 64), mode="bilinear", align_corners=False)
    # one batched tensor vs a list of (3, H, W) tensors: same resize/normalisation, batch-wise vs per image
    torch.testing.assert_close(model.score(big, prompts[:5], batch_size=2), model.score(list(big), prompts[:5]),
                               rtol=0, atol=1e-6)
    bad = big.clone()
    bad[3, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"images\[3\].*1 NaN/inf"):
        model.score(bad, prompts[:5], batch_size=2)


def test_cross_dataset_evaluation(model):
    from vlplugins.hyperalign.data import shapes_alignment_records
    from vlplugins.hyperalign.evaluation import correlation_metrics, cross_dataset

    sets = {"shapes-a": shapes_alignment_records(12, num_prompts=4),
            "shapes-b": shapes_alignment_records(12, num_prompts=4, start=50)}
    res = cross_dataset(model, sets, batch_size=32)
    for name, recs in sets.items():
        pred = model.score([r["image"] for r in recs], [r["prompt"] for r in recs]).double().numpy()
        want = correlation_metrics(pred, [r["mos"] for r in recs])
        assert res[name] == want  # same batches -> bit-identical scores and metrics
