"""IQA evaluation: SRCC, KRCC, PLCC (raw and after the 4-parameter logistic fit), cross-dataset runs, a results
table and a scatter plot of predictions vs MOS.

Conventions (``specs/hyperalign.md`` §3.1): SRCC/KRCC need no fitting (rank statistics); PLCC is reported both on
the raw predictions (``plcc_raw``, what learned AGIQA regressors usually report) and after the VQEG-style
monotone logistic ``y = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` fitted with ``scipy.optimize.curve_fit``
from ``[max(y), min(y), mean(x), std(x) / 4]`` (pyiqa's ``logistic_4params``). Repeated splits are aggregated by
median and mean.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import optimize, stats

METRICS = ("srcc", "krcc", "plcc_raw", "plcc_fit4")


def _as_pair(pred, mos) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(mos, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"pred/mos: expected the same length, got {x.size} predictions and {y.size} MOS values")
    if x.size < 3:
        raise ValueError(f"pred: expected at least 3 pairs for correlations, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("pred/mos: expected finite values, got NaN/inf")
    return x, y


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` (monotone increasing for b1 > b2)."""
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -500.0, 500.0)  # exp overflow guard
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic4(pred, mos) -> tuple[np.ndarray, np.ndarray]:
    """Fit :func:`logistic4` from predictions to MOS.

    Returns:
        ``(fitted predictions (N,), parameters (4,))``; if the fit fails to converge the raw predictions and NaN
        parameters are returned (PLCC then equals the raw PLCC).
    """
    x, y = _as_pair(pred, mos)
    sx = x.std()
    beta0 = [y.max(), y.min(), x.mean(), sx / 4 if sx > 0 else 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            beta, _ = optimize.curve_fit(logistic4, x, y, p0=beta0, maxfev=20000)
    except (RuntimeError, optimize.OptimizeWarning, ValueError):
        return x, np.full(4, np.nan)
    return logistic4(x, *beta), beta


def correlation_metrics(pred, mos) -> dict[str, float]:
    """SRCC, KRCC, raw PLCC and PLCC after the logistic fit of ``pred`` (N,) against ``mos`` (N,)."""
    x, y = _as_pair(pred, mos)
    if x.std() == 0 or y.std() == 0:
        return {k: 0.0 for k in METRICS}
    fitted, _ = fit_logistic4(x, y)
    # a degenerate fit (constant curve) carries no correlation information: fall back to the raw PLCC
    degenerate = fitted.std() <= 1e-9 * (1 + abs(fitted.mean()))
    plcc_fit = stats.pearsonr(x if degenerate else fitted, y)[0]
    return {
        "srcc": float(stats.spearmanr(x, y)[0]),
        "krcc": float(stats.kendalltau(x, y)[0]),
        "plcc_raw": float(stats.pearsonr(x, y)[0]),
        "plcc_fit4": float(plcc_fit),
    }


def aggregate(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median and mean of each metric over repeated splits: keys ``<metric>_median`` and ``<metric>_mean``."""
    if not runs:
        raise ValueError("runs: expected at least one result, got 0")
    out = {}
    for k in runs[0]:
        vals = np.array([r[k] for r in runs], dtype=np.float64)
        out[f"{k}_median"] = float(np.median(vals))
        out[f"{k}_mean"] = float(vals.mean())
    out["num_runs"] = len(runs)
    return out


def predict(model, records: Sequence[Mapping], batch_size: int = 32) -> np.ndarray:
    """Scores of ``model`` (anything with ``score(images, prompts, batch_size)``) on records -> (N,) array."""
    images = [r["image"] for r in records]
    prompts = [r["prompt"] for r in records]
    return model.score(images, prompts, batch_size=batch_size).numpy().astype(np.float64)


def evaluate_model(model, records: Sequence[Mapping], batch_size: int = 32) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``model`` on ``records`` (their ``mos`` field) and the predictions."""
    pred = predict(model, records, batch_size)
    return correlation_metrics(pred, [r["mos"] for r in records]), pred


def cross_dataset(model, datasets: Mapping[str, Sequence[Mapping]], batch_size: int = 32) -> dict[str, dict]:
    """Evaluate one trained model on several (other) databases: ``{name: metrics}``."""
    return {name: evaluate_model(model, recs, batch_size)[0] for name, recs in datasets.items()}


def results_table(rows: Mapping[str, Mapping[str, float]], metrics: Iterable[str] = METRICS) -> str:
    """Markdown table: one row per setting (e.g. ``"agiqa3k"`` or ``"aigciqa2023 -> agiqa3k"``), one column per
    metric."""
    from ..hub.cards import markdown_table

    metrics = list(metrics)
    return markdown_table(["setting", *metrics], [[name, *[float(m[k]) for k in metrics]] for name, m in rows.items()])


def scatter_plot(pred, mos, path: str | os.PathLike, title: Optional[str] = None, with_fit: bool = True) -> str:
    """Scatter of predicted score vs MOS (plus the fitted logistic curve) written as a PNG.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = _as_pair(pred, mos)
    m = correlation_metrics(x, y)
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
    ax.scatter(x, y, s=8, alpha=0.6)
    if with_fit:
        _, beta = fit_logistic4(x, y)
        if np.isfinite(beta).all():
            xs = np.linspace(x.min(), x.max(), 200)
            ax.plot(xs, logistic4(xs, *beta), color="C3", lw=1.5, label="4-param logistic")
            ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("predicted score")
    ax.set_ylabel("MOS")
    ax.set_title(title or f"SRCC {m['srcc']:.3f}  PLCC {m['plcc_raw']:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)
    return str(path)
