"""Geometry core: geoopt agreement (float64), float64 closed forms (float32), properties, fp16/bf16 safety."""

import math

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vlplugins.geometry import lorentz as L
from vlplugins.geometry import poincare as P

CURVATURES = [0.5, 1.0, 2.0]


def rand(*shape, scale=1.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def ball(c):
    # geoopt keeps a float32 curvature unless given a float64 tensor (see spec): always pass float64.
    return geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))


def rel(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item()


# ---------------------------------------------------------------- Poincaré vs geoopt (float64)
@pytest.mark.parametrize("c", CURVATURES)
def test_poincare_matches_geoopt_float64(c):
    b = ball(c)
    # Tangent norms up to ~2/sqrt(c): points well inside the ball, where geoopt's projection does not act.
    v, w = rand(64, 16, scale=0.4 / math.sqrt(c), seed=1), rand(64, 16, scale=0.4 / math.sqrt(c), seed=2)
    x, y = P.expmap0(v, c), P.expmap0(w, c)
    assert rel(x, b.expmap0(v)) < 1e-9
    assert rel(P.logmap0(x, c), b.logmap0(x)) < 1e-9
    assert rel(P.mobius_add(x, y, c), b.mobius_add(x, y)) < 1e-9
    # expmap at x moves by tanh(sqrt(c) λ_x |u| / 2): keep base points interior (λ_x small) so that geoopt's
    # own projection to 1 - 1e-5 does not act on its result.
    inner_x = P.expmap0(rand(64, 16, scale=0.1 / math.sqrt(c), seed=3), c)
    small = rand(64, 16, scale=0.05, seed=3)
    assert rel(P.expmap(inner_x, small, c), b.expmap(inner_x, small)) < 1e-9
    assert rel(P.dist(x, y, c), b.dist(x, y)) < 1e-9
    assert rel(P.dist0(x, c), b.dist0(x)) < 1e-9
    pw = P.pairwise_dist(x, y, c)
    ref = b.dist(x[:, None, :], y[None, :, :])
    assert pw.shape == (64, 64)
    assert rel(pw, ref) < 1e-9


# ---------------------------------------------------------------- Poincaré closed forms (float32 vs float64)
def np_expmap0(v, c):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.tanh(np.sqrt(c) * n) * v / (np.sqrt(c) * n)


def np_dist(x, y, c):
    # Independent closed form: d = acosh(1 + 2c|x-y|^2 / ((1-c|x|^2)(1-c|y|^2))) / sqrt(c)
    num = 2 * c * ((x - y) ** 2).sum(-1)
    den = (1 - c * (x ** 2).sum(-1)) * (1 - c * (y ** 2).sum(-1))
    return np.arccosh(1 + num / den) / np.sqrt(c)


@pytest.mark.parametrize("c", CURVATURES)
def test_poincare_float32_matches_float64_closed_forms(c):
    # sqrt(c)|v| ~ 1 (|x| ~ 0.76/sqrt(c)): away from the boundary, where float32 distances are well conditioned.
    # Inputs are rounded to float32 first, so the reference measures the function's error, not input rounding.
    v = rand(128, 8, scale=0.35 / math.sqrt(c), seed=4).numpy().astype(np.float32).astype(np.float64)
    w = rand(128, 8, scale=0.35 / math.sqrt(c), seed=5).numpy().astype(np.float32).astype(np.float64)
    v32 = torch.tensor(v, dtype=torch.float32)
    x64 = np_expmap0(v, c).astype(np.float32).astype(np.float64)
    y64 = np_expmap0(w, c).astype(np.float32).astype(np.float64)
    x32 = P.expmap0(v32, c)
    assert x32.dtype == torch.float32
    np.testing.assert_allclose(x32.numpy(), np_expmap0(v, c), rtol=1e-5, atol=1e-7)
    d32 = P.dist(torch.tensor(x64, dtype=torch.float32), torch.tensor(y64, dtype=torch.float32), c)
    np.testing.assert_allclose(d32.numpy(), np_dist(x64, y64, c), rtol=1e-5)
    pw = P.pairwise_dist(torch.tensor(x64, dtype=torch.float32), torch.tensor(y64, dtype=torch.float32), c)
    np.testing.assert_allclose(pw.numpy(), np_dist(x64[:, None], y64[None], c), rtol=1e-5)
    # radius = 2|v| for every curvature, exactly from the tangent vector
    np.testing.assert_allclose(P.expmap0_radius(v32, c).numpy(), 2 * np.linalg.norm(v, axis=-1), rtol=1e-6)
    np.testing.assert_allclose(P.dist0(x32, c).numpy(), 2 * np.linalg.norm(v, axis=-1), rtol=1e-5)


def test_expmap0_radius_does_not_saturate():
    v = torch.tensor([[30.0, 40.0]])  # |v| = 50: tanh(50) == 1 in float32, the ball point sits on the bound
    assert P.expmap0_radius(v, 1.0).item() == pytest.approx(100.0, rel=1e-7)
    assert P.dist0(P.expmap0(v, 1.0), 1.0).item() < 13.0  # the point itself only carries ~6 digits of radius
    assert torch.equal(P.expmap0(torch.zeros(3, 4), 1.0), torch.zeros(3, 4))


# ---------------------------------------------------------------- Poincaré properties (hypothesis)
vec = st.lists(st.floats(-3, 3, allow_nan=False), min_size=4, max_size=4)


@given(vec, st.sampled_from(CURVATURES))
def test_logmap0_inverts_expmap0_in_documented_range(values, c):
    v = torch.tensor(values, dtype=torch.float32)
    # Documented float32 range: sqrt(c)|v| <= 3.
    n = v.norm()
    if n * math.sqrt(c) > 3:
        v = v / n * 3 / math.sqrt(c)
    back = P.logmap0(P.expmap0(v, c), c)
    assert torch.allclose(back, v, rtol=1e-5, atol=1e-5 * max(1.0, v.norm().item()))


@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=4, max_size=4), st.sampled_from(CURVATURES))
def test_points_stay_in_ball(values, c):
    x = P.expmap0(torch.tensor(values, dtype=torch.float32), c)
    # Bound 1 - 1e-5, up to float32 rounding of the recomputed norm (2 ulps of 1.0); strictly inside the ball.
    assert math.sqrt(c) * x.norm().item() <= 1 - 1e-5 + 2.4e-7
    assert math.sqrt(c) * x.double().norm().item() < 1.0


pts = st.lists(st.floats(-2, 2, allow_nan=False), min_size=3, max_size=3)


@given(pts, pts, pts, st.sampled_from(CURVATURES))
def test_poincare_distance_symmetry_and_triangle(a, b, cc, c):
    x, y, z = (P.expmap0(torch.tensor(t, dtype=torch.float64), c) for t in (a, b, cc))
    assert P.dist(x, y, c).item() == pytest.approx(P.dist(y, x, c).item(), rel=1e-9, abs=1e-9)
    assert P.dist(x, z, c) <= P.dist(x, y, c) + P.dist(y, z, c) + 1e-9


# ---------------------------------------------------------------- Lorentz: float64 references
def full(xs, c):
    """(x_0, x_space) in float64 numpy, independent of the library."""
    xs = np.asarray(xs, dtype=np.float64)
    return np.concatenate([np.sqrt(1 / c + (xs ** 2).sum(-1, keepdims=True)), xs], -1)


def mink(a, b):
    return -a[..., 0] * b[..., 0] + (a[..., 1:] * b[..., 1:]).sum(-1)


def np_lorentz_exp0(v, c):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.sinh(np.sqrt(c) * n) * v / (np.sqrt(c) * n)


def np_lorentz_dist(x, y, c):
    return np.arccosh(np.maximum(-c * mink(full(x, c), full(y, c)), 1.0)) / np.sqrt(c)


def np_exterior_angle(x, y, c):
    """Angle at x between the continuation of the geodesic O->x and the geodesic x->y, via tangent vectors."""
    X, Y = full(x, c), full(y, c)
    O = np.zeros_like(X)
    O[..., 0] = 1 / np.sqrt(c)
    def log_dir(p, q):  # direction of log_p(q): q + c<p,q> p (projection onto T_p)
        return q + c * mink(p, q)[..., None] * p
    u = -log_dir(X, O)
    w = log_dir(X, Y)
    cos = mink(u, w) / np.sqrt(mink(u, u) * mink(w, w))
    return np.arccos(np.clip(cos, -1, 1))


@pytest.mark.parametrize("c", CURVATURES)
def test_lorentz_matches_geoopt_float64(c):
    lz = geoopt.Lorentz(k=torch.tensor(1.0 / c, dtype=torch.float64))  # geoopt's k = 1/c, full coordinates
    v, w = rand(64, 16, scale=0.5, seed=6), rand(64, 16, scale=0.5, seed=7)
    x, y = L.exp_map0(v, c), L.exp_map0(w, c)
    fx = torch.cat([L.time_component(x, c)[:, None], x], -1)
    fy = torch.cat([L.time_component(y, c)[:, None], y], -1)
    assert rel(fx, lz.expmap0(torch.cat([torch.zeros(64, 1, dtype=torch.float64), v], -1))) < 1e-9
    assert rel(L.dist(x, y, c), lz.dist(fx, fy)) < 1e-9
    assert rel(L.pairwise_dist(x, y, c), lz.dist(fx[:, None], fy[None])) < 1e-9
    assert rel(L.log_map0(x, c), lz.logmap0(fx)[:, 1:]) < 1e-9
    # (geoopt's manifold.inner is the Riemannian metric on tangent vectors; the Minkowski product is in its math module)
    assert rel(L.inner(x, y, c), geoopt.manifolds.lorentz.math.inner(fx, fy)) < 1e-9


@pytest.mark.parametrize("c", CURVATURES)
def test_lorentz_float32_matches_float64_closed_forms(c):
    v = rand(128, 8, scale=0.6, seed=8).numpy()
    w = rand(128, 8, scale=0.6, seed=9).numpy()
    x64, y64 = np_lorentz_exp0(v, c), np_lorentz_exp0(w, c)
    x32 = L.exp_map0(torch.tensor(v, dtype=torch.float32), c)
    np.testing.assert_allclose(x32.numpy(), x64, rtol=1e-5, atol=1e-7)
    X, Y = torch.tensor(x64, dtype=torch.float32), torch.tensor(y64, dtype=torch.float32)
    np.testing.assert_allclose(L.dist(X, Y, c).numpy(), np_lorentz_dist(x64, y64, c), rtol=1e-5)
    np.testing.assert_allclose(L.pairwise_dist(X, Y, c).numpy(), np_lorentz_dist(x64[:, None], y64[None], c),
                               rtol=1e-5)
    # distance to the vertex equals |v| (closed form)
    origin = torch.zeros_like(X)
    np.testing.assert_allclose(L.dist(origin, X, c).numpy(), np.linalg.norm(v, axis=-1), rtol=1e-5)
    ha = np.arcsin(np.minimum(2 * 0.1 / (np.sqrt(c) * np.linalg.norm(x64, axis=-1)), 1 - 1e-6))
    np.testing.assert_allclose(L.half_aperture(X, c, 0.1).numpy(), ha, rtol=1e-5)
    np.testing.assert_allclose(L.oxy_angle(X, Y, c).numpy(), np_exterior_angle(x64, y64, c), rtol=1e-4, atol=1e-4)


def test_oxy_angle_limits_and_half_aperture_shape():
    x = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64)
    beyond = x * 3.0  # on the ray O -> x, past x: inside every cone
    between = x * 0.3  # on the segment O -> x
    assert L.oxy_angle(x, beyond, 1.0).item() < 1e-5
    assert L.oxy_angle(x, between, 1.0).item() == pytest.approx(math.pi, abs=1e-5)
    norms = torch.linspace(0.01, 50, 200, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 0.0]])
    ha = L.half_aperture(norms, 1.0)
    assert (ha > 0).all() and (ha < math.pi / 2).all()
    assert (ha[1:] <= ha[:-1]).all()  # non-increasing in |x|
    assert ha[0].item() == pytest.approx(math.pi / 2, abs=2e-6)  # inside the min-radius ball: saturated


@given(st.lists(st.floats(-8, 8, allow_nan=False), min_size=4, max_size=4), st.sampled_from(CURVATURES))
def test_lorentz_points_on_hyperboloid(values, c):
    v = torch.tensor(values, dtype=torch.float32)
    # Documented range of the inverse: sqrt(c)|v| <= asinh(2^15) ≈ 11.09, where exp_map0 caps sinh.
    if v.norm() * math.sqrt(c) > 11.0:
        v = v / v.norm() * 11.0 / math.sqrt(c)
    x = L.exp_map0(v, c).double()
    x0 = torch.sqrt(1 / c + (x * x).sum())
    # -x0^2 + |x|^2 = -1/c, relative to the size of the terms
    assert abs((-x0 ** 2 + (x * x).sum()).item() + 1 / c) <= 1e-5 * max(1.0, x0.item() ** 2)
    back = L.log_map0(L.exp_map0(v, c), c)
    assert torch.allclose(back, v, rtol=1e-5, atol=1e-5 * max(1.0, v.norm().item()))


@given(pts, pts, pts, st.sampled_from(CURVATURES))
def test_lorentz_distance_symmetry_and_triangle(a, b, cc, c):
    x, y, z = (L.exp_map0(torch.tensor(t, dtype=torch.float64), c) for t in (a, b, cc))
    assert L.dist(x, y, c).item() == pytest.approx(L.dist(y, x, c).item(), rel=1e-9, abs=1e-9)
    assert L.dist(x, z, c) <= L.dist(x, y, c) + L.dist(y, z, c) + 1e-9
    assert L.dist(x, x, c).item() < 1e-15  # the chord form has no 1 + eps floor


# ---------------------------------------------------------------- NaN/inf safety in fp16 / bf16 / fp32
NORMS = [0.0, 1e-8, 1e-3, 0.5, 1.0, 10.0, 100.0, 1e3, 1e4]


def _vectors(dtype):
    base = rand(len(NORMS), 8, seed=11, dtype=torch.float32)
    base = base / base.norm(dim=-1, keepdim=True)
    return (base * torch.tensor(NORMS)[:, None]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_no_nan_or_inf_in_values_or_gradients(dtype, c):
    v = _vectors(dtype).requires_grad_(True)
    w = _vectors(dtype).flip(0).detach().requires_grad_(True)
    outs = {}
    x, y = P.expmap0(v, c), P.expmap0(w, c)
    outs["p.expmap0"] = x
    outs["p.logmap0"] = P.logmap0(x, c)
    outs["p.mobius_add"] = P.mobius_add(x, y, c)
    outs["p.expmap"] = P.expmap(x, w, c)
    outs["p.dist"] = P.dist(x, y, c)
    outs["p.dist_self"] = P.dist(x, x, c)
    outs["p.pairwise_dist"] = P.pairwise_dist(x, y, c)
    outs["p.dist0"] = P.dist0(x, c)
    outs["p.radius"] = P.expmap0_radius(v, c)
    outs["p.project"] = P.project(v, c)
    a, b = L.exp_map0(v, c), L.exp_map0(w, c)
    outs["l.exp_map0"] = a
    outs["l.log_map0"] = L.log_map0(a, c)
    outs["l.inner"] = L.inner(a, b, c)
    outs["l.dist"] = L.dist(a, b, c)
    outs["l.dist_self"] = L.dist(a, a, c)
    outs["l.pairwise_dist"] = L.pairwise_dist(a, b, c)
    outs["l.half_aperture"] = L.half_aperture(a, c)
    outs["l.oxy_angle"] = L.oxy_angle(a, b, c)
    outs["l.oxy_angle_self"] = L.oxy_angle(a, a, c)
    outs["l.raw_dist"] = L.dist(v, w, c)  # raw inputs with norms up to 1e4 are valid space components too
    for name, out in outs.items():
        assert out.dtype == dtype, name
        assert torch.isfinite(out).all(), f"{name} not finite for {dtype}, c={c}"
        gv, gw = torch.autograd.grad(out.float().sum(), (v, w), allow_unused=True, retain_graph=True)
        for g in (gv, gw):
            assert g is None or torch.isfinite(g).all(), f"grad of {name} not finite for {dtype}, c={c}"


def test_autocast_is_disabled_inside_and_dtype_preserved():
    v = rand(16, 8, scale=0.5, dtype=torch.float32, seed=12)
    ref = L.pairwise_dist(L.exp_map0(v, 1.0), L.exp_map0(v.flip(0), 1.0), 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L.pairwise_dist(L.exp_map0(v, 1.0), L.exp_map0(v.flip(0), 1.0), 1.0)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)  # computed in float32, unaffected by autocast


def test_learnable_curvature_gets_gradient():
    log_c = torch.zeros((), requires_grad=True)
    v = rand(4, 3, dtype=torch.float32, seed=13)
    P.dist0(P.expmap0(v, log_c.exp()), log_c.exp()).sum().backward()
    assert log_c.grad is not None and torch.isfinite(log_c.grad)
    assert log_c.grad.abs().item() > 0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), torch.tensor(-2.0)])
def test_bad_curvature_raises(bad):
    with pytest.raises(ValueError, match="c: expected a positive"):
        P.expmap0(torch.ones(2, 3), bad)
    with pytest.raises(ValueError, match="c: expected a positive"):
        L.exp_map0(torch.ones(2, 3), bad)


def test_non_float_input_raises():
    with pytest.raises(ValueError, match="floating point"):
        P.expmap0(torch.ones(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="min_radius"):
        L.half_aperture(torch.ones(2, 3), 1.0, min_radius=0.0)


def test_clamped_curvature_meru_rule():
    from vlplugins.geometry import clamped_curvature

    log_c = torch.tensor(math.log(0.5), requires_grad=True)
    c = clamped_curvature(log_c, 0.5)
    assert c.item() == pytest.approx(0.5, rel=1e-7)
    c.backward()
    assert log_c.grad.item() == pytest.approx(0.5, rel=1e-6)  # d exp(log c) / d log c = c inside the range
    assert clamped_curvature(torch.tensor(10.0), 0.5).item() == pytest.approx(5.0, rel=1e-6)
    assert clamped_curvature(torch.tensor(-10.0), 0.5, factor=4.0).item() == pytest.approx(0.125, rel=1e-6)
    with pytest.raises(ValueError, match="c_init"):
        clamped_curvature(torch.tensor(0.0), -1.0)
