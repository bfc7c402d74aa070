"""Readers for text-to-image alignment databases, prompt-disjoint splits, and the synthetic shapes-world set.

Every reader returns a list of records ``{"image": str path, "prompt": str, "mos": float, "group": str, ...}``
where ``mos`` is the alignment MOS HyperAlign regresses on and ``group`` the prompt (the split key: all images of
a prompt go to the same side of a split).

Layouts (see ``specs/hyperalign.md`` §3.2):

* **AGIQA-3K** (``lcysyzxdxc/AGIQA-3k-Database``): ``data.csv`` with columns ``name, prompt, adj1, adj2, style,
  mos_quality, std_quality, mos_align, std_align``; images ``<name>`` under the data directory (or ``images/``).
  Target: ``mos_align``.
* **AIGCIQA2023** (``wangjiarui153/AIGCIQA2023``): MOS as MATLAB files ``DATA/MOS/mosz1.mat`` (quality),
  ``mosz2.mat`` (authenticity), ``mosz3.mat`` (correspondence), variable ``MOSz``, standard deviations in
  ``DATA/STD/SD{1,2,3}.mat`` (variable ``SD``); images ``Image/allimg/<i>.png`` for row ``i``. The ``.mat`` files
  carry no prompts, so ``AIGCIQA2023.csv`` (columns ``<index>, name, prompt, style, class, quality_mos,
  authenticity_mos, correspondence_mos, ...``) from the repository is read for them; without the ``.mat`` files
  the csv's ``correspondence_mos`` is used. Target: correspondence.
* **PKU-I2IQA** (``jiquan123/I2IQA``): the label file layout is not published in the repository; we read a csv
  with columns ``name, prompt, mos`` (optional ``ref_name``) and images under the data directory (or
  ``images/``) — our assumption, documented as such. Paper split 3:1.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DATASETS = ("agiqa3k", "aigciqa2023", "pku_i2iqa", "shapes")
# Paper protocol: train:test = 4:1 (AGIQA-3K, AIGCIQA2023) and 3:1 (PKU-I2IQA).
TRAIN_FRACTION = {"agiqa3k": 0.8, "aigciqa2023": 0.8, "pku_i2iqa": 0.75, "shapes": 0.8}


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"data_dir: expected {path.name} at {path}, but it does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _column(row: dict, names: Sequence[str], path: Path, line: int) -> str:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    raise ValueError(f"{path.name}: row {line} has no column {' / '.join(names)} (columns: {sorted(row)})")


def _float(value: str, column: str, path: Path, line: int) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path.name}: row {line} column {column!r}: expected a number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{path.name}: row {line} column {column!r}: expected a finite number, got {value!r}")
    return v


def _image_dir(data_dir: Path, first_name: str, candidates: Sequence[str]) -> Path:
    for sub in candidates:
        d = data_dir / sub if sub else data_dir
        if (d / first_name).is_file():
            return d
    return data_dir / candidates[0] if candidates[0] else data_dir


def load_agiqa3k(data_dir: str | os.PathLike, target: str = "mos_align", csv_name: str = "data.csv") -> list[dict]:
    """Read AGIQA-3K.

    Args:
        data_dir: folder holding ``data.csv`` and the images (directly or in ``images/``).
        target: MOS column to regress (``"mos_align"``; ``"mos_quality"`` for perceptual quality).
        csv_name: label file name.

    Returns:
        Records with ``image, prompt, mos, mos_quality, mos_align, std_align, group, generator``.
    """
    data_dir = Path(data_dir)
    path = data_dir / csv_name
    rows = _read_csv(path)
    if not rows:
        raise ValueError(f"{path}: expected at least one row, got none")
    if target not in ("mos_align", "mos_quality"):
        raise ValueError(f"target: expected 'mos_align' or 'mos_quality', got {target!r}")
    img_dir = _image_dir(data_dir, rows[0].get("name", ""), ("images", "", "AGIQA-3K"))
    out = []
    for line, row in enumerate(rows, start=2):
        name = _column(row, ("name",), path, line)
        prompt = _column(row, ("prompt",), path, line)
        rec = {
            "image": str(img_dir / name),
            "name": name,
            "prompt": prompt,
            "mos_quality": _float(_column(row, ("mos_quality",), path, line), "mos_quality", path, line),
            "mos_align": _float(_column(row, ("mos_align",), path, line), "mos_align", path, line),
            "std_align": _float(row["std_align"], "std_align", path, line) if row.get("std_align") else None,
            "group": prompt,
            # "<model>_<variant>_<idx>.jpg", e.g. "SDXL2.2_normal_000.jpg".
            "generator": name.split("_")[0],
        }
        rec["mos"] = rec[target]
        out.append(rec)
    return out


def _load_mat_vector(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    data = loadmat(str(path))
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path}: expected variable {key!r}, found {keys}")
    return np.asarray(data[key], dtype=np.float64).reshape(-1)


def load_aigciqa2023(data_dir: str | os.PathLike, target: str = "correspondence",
                     csv_name: str = "AIGCIQA2023.csv") -> list[dict]:
    """Read AIGCIQA2023 in its published layout (``DATA/MOS/mosz{1,2,3}.mat`` + ``Image/allimg/<i>.png``; prompts
    from ``AIGCIQA2023.csv``).

    Args:
        data_dir: dataset root.
        target: ``"correspondence"`` (alignment, default), ``"quality"`` or ``"authenticity"``.
        csv_name: prompt table from the repository.

    Returns:
        Records with ``image, prompt, mos, mos_quality, mos_authenticity, mos_correspondence, group, style, class``.
    """
    kinds = ("quality", "authenticity", "correspondence")
    if target not in kinds:
        raise ValueError(f"target: expected one of {kinds}, got {target!r}")
    data_dir = Path(data_dir)
    path = data_dir / csv_name
    rows = _read_csv(path)
    mats = [data_dir / "DATA" / "MOS" / f"mosz{i}.mat" for i in (1, 2, 3)]
    mos: dict[str, Optional[np.ndarray]] = {}
    if any(m.is_file() for m in mats):
        for kind, m in zip(kinds, mats):
            if not m.is_file():
                raise ValueError(f"data_dir: expected {m} (AIGCIQA2023 {kind} MOS), but it does not exist")
            mos[kind] = _load_mat_vector(m, "MOSz")
            if len(mos[kind]) != len(rows):
                raise ValueError(f"{m.name}: expected {len(rows)} MOS values (rows of {csv_name}), "
                                 f"got {len(mos[kind])}")
    img_dir = data_dir / "Image" / "allimg"
    out = []
    for i, row in enumerate(rows):
        line = i + 2
        name = row.get("name") or f"{i}.png"
        index = int(Path(name).stem) if Path(name).stem.isdigit() else i
        prompt = _column(row, ("prompt",), path, line)
        rec = {"image": str(img_dir / name), "name": name, "prompt": prompt, "group": prompt,
               "style": row.get("style"), "class": row.get("class")}
        for kind in kinds:
            if mos:
                if not 0 <= index < len(mos[kind]):
                    raise ValueError(f"{path.name}: row {line} image {name!r} has no entry in mosz*.mat")
                rec[f"mos_{kind}"] = float(mos[kind][index])
            else:
                col = f"{kind}_mos"
                rec[f"mos_{kind}"] = _float(_column(row, (col,), path, line), col, path, line)
        rec["mos"] = rec[f"mos_{target}"]
        out.append(rec)
    return out


def load_pku_i2iqa(data_dir: str | os.PathLike, csv_name: str = "pku_i2iqa.csv") -> list[dict]:
    """Read PKU-I2IQA from a csv with columns ``name, prompt, mos`` (optional ``ref_name``) — our assumed layout,
    the repository does not publish one.

    Returns:
        Records with ``image, prompt, mos, group`` (and ``ref_image`` when ``ref_name`` is given).
    """
    data_dir = Path(data_dir)
    path = data_dir / csv_name
    rows = _read_csv(path)
    if not rows:
        raise ValueError(f"{path}: expected at least one row, got none")
    first = rows[0].get("name") or rows[0].get("image") or ""
    img_dir = _image_dir(data_dir, first, ("images", ""))
    out = []
    for line, row in enumerate(rows, start=2):
        name = _column(row, ("name", "image", "image_name"), path, line)
        prompt = _column(row, ("prompt", "text"), path, line)
        rec = {"image": str(img_dir / name), "name": name, "prompt": prompt, "group": prompt,
               "mos": _float(_column(row, ("mos", "MOS"), path, line), "mos", path, line)}
        if row.get("ref_name"):
            rec["ref_image"] = str(img_dir / row["ref_name"])
        out.append(rec)
    return out


def shapes_alignment_records(count: int, num_prompts: int = 64, start: int = 0, image_size: int = 32,
                             seed: int = 0) -> list[dict]:
    """Synthetic alignment set from :meth:`vlplugins.data.ShapesWorld.alignment_pair`: ``score = k / 5`` attributes of
    the prompt kept in the image.

    Returns:
        Records with ``image`` (PIL), ``prompt``, ``mos`` (in ``[0, 1]``), ``group`` (prompt id).
    """
    from ..data import ShapesWorld

    world = ShapesWorld(image_size=image_size, seed=seed)
    out = []
    for i in range(start, start + count):
        p = world.alignment_pair(i, num_prompts=num_prompts)
        out.append({"image": p["image"], "prompt": p["prompt"], "mos": float(p["score"]),
                    "group": str(p["prompt_id"])})
    return out


def load_dataset(name: str, data_dir: Optional[str | os.PathLike] = None, **kwargs) -> list[dict]:
    """Dispatch to a reader: ``"agiqa3k"``, ``"aigciqa2023"``, ``"pku_i2iqa"`` or ``"shapes"`` (synthetic)."""
    if name == "shapes":
        return shapes_alignment_records(kwargs.pop("count", 640), **kwargs)
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")
    if data_dir is None:
        raise ValueError(f"data_dir: required for dataset {name!r}, got None")
    return {"agiqa3k": load_agiqa3k, "aigciqa2023": load_aigciqa2023, "pku_i2iqa": load_pku_i2iqa}[name](
        data_dir, **kwargs)


def prompt_disjoint_split(records: Sequence[dict], train_fraction: float = 0.8, seed: int = 0,
                          key: str = "group") -> tuple[list[int], list[int]]:
    """Split record indices so that no prompt (``record[key]``) is on both sides.

    Prompt groups are shuffled with ``numpy.random.default_rng(seed)`` and assigned to train until the train side
    holds ``round(train_fraction * N)`` records or the next group would overshoot by more than it would undershoot,
    so the ratio is met within one group.

    Returns:
        ``(train_indices, test_indices)``, each sorted.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction: expected a value in (0, 1), got {train_fraction!r}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(str(r[key]), []).append(i)
    if len(groups) < 2:
        raise ValueError(f"records: expected at least 2 distinct prompts to split, got {len(groups)}")
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    target = train_fraction * len(records)
    train: list[int] = []
    test: list[int] = []
    for j in order:
        members = groups[names[j]]
        # Put the group in train if that brings the train size closer to the target.
        if abs(len(train) + len(members) - target) <= abs(len(train) - target):
            train.extend(members)
        else:
            test.extend(members)
    if not train or not test:
        raise ValueError(f"records: cannot split {len(groups)} prompt groups at {train_fraction}")
    return sorted(train), sorted(test)


def repeated_splits(records: Sequence[dict], train_fraction: float = 0.8, seeds: Sequence[int] = range(10),
                    key: str = "group") -> list[tuple[list[int], list[int]]]:
    """:func:`prompt_disjoint_split` for each seed (the paper's repeated random splits)."""
    return [prompt_disjoint_split(records, train_fraction, seed, key) for seed in seeds]


def normalise_mos(values: Sequence[float], lo: Optional[float] = None, hi: Optional[float] = None) -> np.ndarray:
    """Min-max normalise MOS to ``[0, 1]`` (with given or observed bounds; values are clipped to the bounds)."""
    v = np.asarray(values, dtype=np.float64)
    lo = float(v.min()) if lo is None else float(lo)
    hi = float(v.max()) if hi is None else float(hi)
    if not hi > lo:
        raise ValueError(f"values: expected a MOS range with max > min, got [{lo}, {hi}]")
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)
