"""HyperAlign data readers (published layouts written here), prompt-disjoint splits, IQA metrics, CLI."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image

from vlplugins.hyperalign.data import (load_agiqa3k, load_aigciqa2023, load_dataset, load_pku_i2iqa, normalise_mos,
                                       prompt_disjoint_split, repeated_splits, shapes_alignment_records)
from vlplugins.hyperalign.evaluation import (aggregate, correlation_metrics, fit_logistic4, logistic4,
                                             results_table, scatter_plot)

AGIQA_HEADER = ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"]


def _img(path, color=(200, 30, 30)):
    Image.new("RGB", (40, 30), color).save(path)


def _write_agiqa(root, with_images=True):
    rows = [
        ["AttnGAN_normal_000.jpg", "an astronaut riding a horse", "", "", "", "0.4", "0.2", "1.2", "0.5"],
        ["DALLE2_normal_000.jpg", "an astronaut riding a horse", "", "", "", "3.1", "0.7", "3.9", "0.6"],
        ["SDXL2.2_abstract_001.jpg", "a cat, abstract style", "", "", "abstract", "2.5", "0.6", "2.75", "0.8"],
    ]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(AGIQA_HEADER)
        w.writerows(rows)
    if with_images:
        (root / "images").mkdir()
        for r in rows:
            _img(root / "images" / r[0])
    return rows


def test_agiqa3k_reader(tmp_path):
    rows = _write_agiqa(tmp_path)
    recs = load_agiqa3k(tmp_path)
    assert [r["name"] for r in recs] == [r[0] for r in rows]
    assert [r["mos"] for r in recs] == [1.2, 3.9, 2.75]
    assert [r["mos_quality"] for r in recs] == [0.4, 3.1, 2.5]
    assert recs[2]["generator"] == "SDXL2.2" and recs[0]["group"] == "an astronaut riding a horse"
    assert recs[0]["image"] == str(tmp_path / "images" / "AttnGAN_normal_000.jpg")
    assert [r["mos"] for r in load_agiqa3k(tmp_path, target="mos_quality")] == [0.4, 3.1, 2.5]
    with pytest.raises(ValueError, match="data.csv"):
        load_agiqa3k(tmp_path / "nowhere")
    with open(tmp_path / "data.csv", "a", newline="") as f:
        csv.writer(f).writerow(["x.jpg", "p", "", "", "", "1", "1", "n/a", "1"])
    with pytest.raises(ValueError, match=r"row 5 column 'mos_align'.*'n/a'"):
        load_agiqa3k(tmp_path)


def _write_aigciqa(root, with_mat=True):
    from scipy.io import savemat

    header = ["", "name", "prompt", "style", "class", "quality_mos", "authenticity_mos", "correspondence_mos",
              "quality_std", "authenticity_std", "correspondence_std"]
    prompts = ["a dog on the beach", "a dog on the beach", "a red car", "a red car"]
    q, a, c = [50.0, 60.0, 40.0, 70.0], [45.0, 55.0, 35.0, 65.0], [62.5, 48.0, 71.0, 39.5]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "AIGCIQA2023.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(4):
            w.writerow([i, f"{i}.png", prompts[i], "Basic", "Animals", q[i], a[i], c[i], 1, 1, 1])
    if with_mat:
        (root / "DATA" / "MOS").mkdir(parents=True)
        (root / "DATA" / "STD").mkdir(parents=True)
        # the released .mat files hold column vectors named MOSz; give them values distinct from the csv
        for k, vals in zip((1, 2, 3), (q, a, c)):
            savemat(str(root / "DATA" / "MOS" / f"mosz{k}.mat"), {"MOSz": np.array(vals)[:, None] + 0.5})
            savemat(str(root / "DATA" / "STD" / f"SD{k}.mat"), {"SD": np.ones((4, 1))})
    (root / "Image" / "allimg").mkdir(parents=True)
    for i in range(4):
        _img(root / "Image" / "allimg" / f"{i}.png")
    return c


def test_aigciqa2023_reader_mat_layout(tmp_path):
    c = _write_aigciqa(tmp_path)
    recs = load_aigciqa2023(tmp_path)
    assert [r["mos"] for r in recs] == [v + 0.5 for v in c]  # from mosz3.mat (correspondence)
    assert [r["mos_quality"] for r in recs] == [50.5, 60.5, 40.5, 70.5]
    assert recs[1]["image"] == str(tmp_path / "Image" / "allimg" / "1.png")
    assert recs[2]["group"] == "a red car"
    assert [r["mos"] for r in load_aigciqa2023(tmp_path, target="authenticity")] == [45.5, 55.5, 35.5, 65.5]
    (tmp_path / "DATA" / "MOS" / "mosz2.mat").unlink()
    with pytest.raises(ValueError, match="mosz2.mat"):
        load_aigciqa2023(tmp_path)


def test_aigciqa2023_reader_csv_only(tmp_path):
    c = _write_aigciqa(tmp_path, with_mat=False)
    assert [r["mos"] for r in load_aigciqa2023(tmp_path)] == c


def test_pku_i2iqa_reader(tmp_path):
    with open(tmp_path / "pku_i2iqa.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "prompt", "mos", "ref_name"])
        w.writerow(["MJ_0001.png", "a castle at dusk", "3.25", "ref_0001.png"])
        w.writerow(["SD_0001.png", "a castle at dusk", "2.5", "ref_0001.png"])
    for name in ("MJ_0001.png", "SD_0001.png", "ref_0001.png"):
        _img(tmp_path / name)
    recs = load_pku_i2iqa(tmp_path)
    assert [r["mos"] for r in recs] == [3.25, 2.5]
    assert recs[0]["ref_image"] == str(tmp_path / "ref_0001.png")
    assert recs[1]["image"] == str(tmp_path / "SD_0001.png")
    assert load_dataset("pku_i2iqa", tmp_path)[1]["name"] == "SD_0001.png"
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("agiqa3k", None)


@pytest.mark.parametrize("fraction", [0.8, 0.75])
def test_prompt_disjoint_split(fraction):
    rng = np.random.default_rng(0)
    records = [{"group": f"p{g}"} for g in range(60) for _ in range(int(rng.integers(1, 7)))]
    max_group = max(sum(1 for r in records if r["group"] == f"p{g}") for g in range(60))
    splits = repeated_splits(records, fraction, seeds=range(5))
    for tr, te in splits:
        assert sorted(tr + te) == list(range(len(records)))
        assert not {records[i]["group"] for i in tr} & {records[i]["group"] for i in te}
        assert abs(len(tr) - fraction * len(records)) <= max_group
    assert splits[0] != splits[1]
    assert prompt_disjoint_split(records, fraction, seed=3) == splits[3]  # deterministic per seed


def test_shapes_records_and_normalise():
    recs = shapes_alignment_records(20, num_prompts=4)
    assert {r["group"] for r in recs} == {"0", "1", "2", "3"}
    assert all(r["mos"] in {0.0, 0.2, 0.4, 0.6, 0.8, 1.0} for r in recs)
    np.testing.assert_array_equal(normalise_mos([1.0, 3.0, 5.0]), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(normalise_mos([1.0, 3.0, 9.0], 1.0, 5.0), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="max > min"):
        normalise_mos([2.0, 2.0])


# ------------------------------------------------------------------------------------------ metrics
def _ranks(x):
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


def test_metrics_against_independent_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + 0.7 * rng.normal(size=40)
    m = correlation_metrics(x, y)
    assert math.isclose(m["plcc_raw"], np.corrcoef(x, y)[0, 1], rel_tol=1e-12)
    assert math.isclose(m["srcc"], np.corrcoef(_ranks(x), _ranks(y))[0, 1], rel_tol=1e-12)
    conc = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(40), 2))
    assert math.isclose(m["krcc"], conc / (40 * 39 / 2), rel_tol=1e-12)  # no ties: tau-a == tau-b
    # SRCC/KRCC are invariant to monotone transforms of the predictions
    m2 = correlation_metrics(np.exp(3 * x), y)
    assert math.isclose(m2["srcc"], m["srcc"], rel_tol=1e-12) and math.isclose(m2["krcc"], m["krcc"], rel_tol=1e-12)


def test_logistic_fit_improves_plcc_on_monotone_nonlinear():
    rng = np.random.default_rng(1)
    x = np.linspace(-3, 3, 200)
    y = logistic4(x, 5.0, 1.0, 0.5, 0.4) + 0.05 * rng.normal(size=200)
    m = correlation_metrics(x, y)
    assert m["plcc_fit4"] > m["plcc_raw"] + 0.02 and m["plcc_fit4"] > 0.99
    _, beta = fit_logistic4(x, y)
    np.testing.assert_allclose([beta[0], beta[1], beta[2], abs(beta[3])], [5.0, 1.0, 0.5, 0.4], atol=0.05)


def test_aggregate_table_and_scatter(tmp_path):
    runs = [{"srcc": 0.5, "plcc_raw": 0.6}, {"srcc": 0.7, "plcc_raw": 0.2}, {"srcc": 0.9, "plcc_raw": 0.4}]
    agg = aggregate(runs)
    assert agg["srcc_median"] == 0.7 and math.isclose(agg["srcc_mean"], 0.7) and agg["plcc_raw_median"] == 0.4
    table = results_table({"agiqa3k": {"srcc": 0.79274, "krcc": 0.6, "plcc_raw": 0.883, "plcc_fit4": 0.9},
                           "aigciqa2023 -> agiqa3k": {"srcc": 0.7013, "krcc": 0.5, "plcc_raw": 0.79, "plcc_fit4": 0.8}})
    assert table.splitlines()[0] == "| setting | srcc | krcc | plcc_raw | plcc_fit4 |"
    assert "| agiqa3k | 0.7927 |" in table and "| aigciqa2023 -> agiqa3k | 0.7013 |" in table
    path = scatter_plot(np.arange(10.0), np.arange(10.0) ** 2, tmp_path / "s.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(ValueError, match="same length"):
        correlation_metrics([1, 2, 3], [1, 2])


# ------------------------------------------------------------------------------------------ CLI
def test_cli_train_eval_score(tmp_path, capsys):
    from vlplugins.cli import main


    assert main(["hyperalign", "train", "--dataset", "shapes", "--count", "96", "--backbone", "preset:tiny-clip",
                 "--epochs", "1", "--batch-size", "16", "--output", str(tmp_path / "rep"), "--repeats", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["split_seed"] for r in lines[:2]] == [0, 1] and lines[2]["seeds"] == [0, 1]
    srccs = [r["test"]["srcc"] for r in lines[:2]]
    assert math.isclose(lines[2]["aggregate"]["srcc_mean"], sum(srccs) / 2, rel_tol=1e-12)
    assert (tmp_path / "rep" / "split_seed_1" / "model.safetensors").is_file()
    res = lines[0]
    out = tmp_path / "rep" / "split_seed_0"
    assert (out / "model.safetensors").is_file() and (out / "scatter_test.png").is_file()
    assert "srcc" in (out / "README.md").read_text()
    assert main(["hyperalign", "eval", "--dataset", "shapes", "--count", "96", "--model", str(out)]) == 0
    table = capsys.readouterr().out
    srcc = float(table.strip().splitlines()[-1].split("|")[2])
    assert math.isclose(srcc, res["test"]["srcc"], abs_tol=5e-4)  # eval re-scores images = train's test metrics
    img = tmp_path / "x.png"
    shapes_alignment_records(1)[0]["image"].save(img)
    assert main(["hyperalign", "score", "--model", str(out), str(img), "a large red circle", "--details"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["prompt"] == "a large red circle" and set(row) >= {"score", "phi", "delta", "d_L", "a", "b", "g"}
