"""Dice/IoU/counts/volumes on hand-counted cases, the empty-reference policy, summary.json, per_case.csv,
folder evaluation with failures, and HD95/NSD through MONAI on shifted cubes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from segvolpipe.evaluation.metrics import (
    CaseResult,
    case_metrics,
    evaluate_folders,
    summarise,
    write_per_case_csv,
    write_summary,
)
from segvolpipe.io.nifti import Geometry, write_label

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney", 4: "gallbladder"}


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """4×4×4 maps: class 1 overlaps by half, 2 missed, 3 absent from both, 4 a false positive."""
    ref = np.zeros((4, 4, 4), np.int16)
    pred = np.zeros((4, 4, 4), np.int16)
    ref[0:2, 0:2, 0:2] = 1  # 8 voxels, x in {0, 1}
    pred[0:2, 0:2, 1:3] = 1  # 8 voxels, x in {1, 2}: 2 × 2 × 1 = 4 shared
    ref[3, 3, 3] = 2
    pred[3, 0, 0] = 4
    return pred, ref


def test_overlap_counts_and_volumes_by_hand() -> None:
    pred, ref = hand_case()
    m = case_metrics(pred, ref, [1, 2, 3, 4], spacing=(2.0, 2.0, 2.5))  # 10 mm³ = 0.01 ml per voxel
    c1 = m[1]
    assert (c1.tp, c1.fp, c1.fn, c1.n_pred, c1.n_ref) == (4, 4, 4, 8, 8)
    assert c1.dice == pytest.approx(2 * 4 / 16) and c1.iou == pytest.approx(4 / 12)
    assert c1.pred_ml == pytest.approx(0.08) and c1.ref_ml == pytest.approx(0.08)
    assert (m[2].dice, m[2].iou, m[2].fn, m[2].tp) == (0.0, 0.0, 1, 0)  # reference only: a miss scores 0
    assert math.isnan(m[3].dice) and math.isnan(m[3].iou)  # absent from both: undefined
    assert (m[4].dice, m[4].iou, m[4].fp, m[4].ref_ml) == (
        0.0,
        0.0,
        1,
        0.0,
    )  # false positive on an empty reference
    assert m[1].hd95 is None and "HD95" not in m[1].to_json()  # surface metrics only when asked
    assert list(m) == [1, 2, 3, 4]


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), [1], (1.0, 1.0, 1.0))


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    out = np.zeros(shape, np.int16)
    out[tuple(slice(a, a + size) for a in lo)] = 1
    return out


def test_hd95_and_nsd_of_shifted_cubes() -> None:
    ref = _cube((16, 16, 16), (4, 4, 4), 6)
    pred = _cube((16, 16, 16), (6, 4, 4), 6)  # shifted 2 voxels along axis 0
    m = case_metrics(pred, ref, [1], (1.0, 1.0, 1.0), hd95=True, nsd_mm=2.0)[1]
    assert m.hd95 == pytest.approx(2.0, abs=1e-4)
    assert m.nsd == pytest.approx(1.0)  # every surface voxel within 2 mm
    m = case_metrics(pred, ref, [1], (1.0, 1.0, 1.0), nsd_mm=0.5)[1]
    assert m.hd95 is None and 0.0 < m.nsd < 1.0
    # the same shift along an axis with 2.5 mm voxels is 5 mm; a cube touching the border still has a surface
    ref = _cube((8, 8, 12), (0, 0, 0), 4)
    pred = _cube((8, 8, 12), (0, 0, 2), 4)
    m = case_metrics(pred, ref, [1], (1.0, 1.0, 2.5), hd95=True)[1]
    assert m.hd95 == pytest.approx(5.0, abs=1e-4)


def test_surface_metrics_follow_the_empty_reference_policy() -> None:
    ref = _cube((8, 8, 8), (2, 2, 2), 3)
    empty = np.zeros_like(ref)
    both = case_metrics(empty, empty, [1], (1.0, 1.0, 1.0), hd95=True, nsd_mm=1.0)[1]
    assert math.isnan(both.hd95) and math.isnan(both.nsd) and math.isnan(both.dice)
    for pred, gt in ((empty, ref), (ref, empty)):
        one = case_metrics(pred, gt, [1], (1.0, 1.0, 1.0), hd95=True, nsd_mm=1.0)[1]
        assert math.isnan(one.hd95) and one.nsd == 0.0 and one.dice == 0.0


def _two_cases() -> list[CaseResult]:
    pred, ref = hand_case()
    a = CaseResult(
        "a", "pred/a.nii.gz", "ref/a.nii.gz", case_metrics(pred, ref, [1, 2, 3, 4], (1.0, 1.0, 1.0))
    )
    ref_b = ref.copy()
    ref_b[0, 3, 0] = 3
    pred_b = ref_b.copy()
    b = CaseResult(
        "b", "pred/b.nii.gz", "ref/b.nii.gz", case_metrics(pred_b, ref_b, [1, 2, 3, 4], (1.0, 1.0, 1.0))
    )
    return [b, a]


def _refuse(constant: str) -> None:
    raise AssertionError(f"invalid JSON constant {constant}")


def test_summary_layout_means_and_json_round_trip(tmp_path: Path) -> None:
    summary = summarise(_two_cases(), LABELS)
    assert summary["labels"] == {"1": "liver", "2": "spleen", "3": "kidney", "4": "gallbladder"}
    assert [c["case"] for c in summary["metric_per_case"]] == ["a", "b"]
    row = summary["metric_per_case"][0]
    assert set(row) >= {"prediction_file", "reference_file", "metrics"}
    assert set(row["metrics"]["1"]) == {
        "Dice",
        "IoU",
        "TP",
        "FP",
        "FN",
        "n_pred",
        "n_ref",
        "pred_ml",
        "ref_ml",
    }
    assert row["metrics"]["3"]["Dice"] is None  # NaN in the summary is already None
    mean = summary["mean"]
    assert mean["1"]["Dice"] == pytest.approx((0.5 + 1.0) / 2)
    assert mean["2"]["Dice"] == pytest.approx((0.0 + 1.0) / 2)
    assert mean["3"]["Dice"] == pytest.approx(1.0)  # case a is NaN there and left out, not counted as 0
    assert mean["4"]["Dice"] == pytest.approx(0.0)  # case b NaN, case a a false positive
    assert mean["1"]["TP"] == pytest.approx((4 + 8) / 2)
    expected_fg = np.mean([mean[k]["Dice"] for k in ("1", "2", "3", "4")])
    assert summary["foreground_mean"]["Dice"] == pytest.approx(expected_fg)

    path = tmp_path / "summary.json"
    write_summary(path, summarise(_two_cases(), LABELS, nsd_mm=None))
    text = path.read_text()

    back = json.loads(text, parse_constant=_refuse)  # strict: NaN / Infinity would be refused
    assert back["metric_per_case"][0]["metrics"]["3"]["Dice"] is None
    assert back["mean"] == json.loads(json.dumps(summary["mean"]))
    assert "schema_version" in back and "provenance" in back
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_nan_means_are_null_when_no_case_defines_them(tmp_path: Path) -> None:
    empty = np.zeros((3, 3, 3), np.int16)
    result = CaseResult("a", "p", "r", case_metrics(empty, empty, [1], (1.0, 1.0, 1.0), hd95=True))
    summary = summarise([result], {1: "liver"})
    assert summary["mean"]["1"]["Dice"] is None and summary["mean"]["1"]["HD95"] is None
    assert summary["foreground_mean"]["Dice"] is None and summary["foreground_mean"]["TP"] == 0
    write_summary(tmp_path / "s.json", summary)
    back = json.loads((tmp_path / "s.json").read_text(), parse_constant=_refuse)
    assert back["mean"]["1"]["Dice"] is None


def test_per_case_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "per_case.csv"
    write_per_case_csv(path, summarise(_two_cases(), LABELS))
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 4
    first = rows[0]
    assert (first["case"], first["class"], first["name"]) == ("a", "1", "liver")
    assert float(first["Dice"]) == pytest.approx(0.5) and int(first["TP"]) == 4
    assert first["prediction_file"] == "pred/a.nii.gz"
    kidney_a = next(r for r in rows if r["case"] == "a" and r["class"] == "3")
    assert kidney_a["Dice"] == ""  # NaN is an empty cell
    assert "HD95" not in first


def _write(
    path: Path,
    array: np.ndarray,
    axcodes: tuple[str, str, str] = ("R", "A", "S"),
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0),
) -> None:
    """Write a canonical array; whatever ``axcodes``, canonical voxel (0, 0, 0) sits at (5, -3, 1) mm."""
    ras = Geometry.from_canonical_spec(array.shape, spacing, ("R", "A", "S"), origin=(5.0, -3.0, 1.0))
    probe = Geometry.from_canonical_spec(array.shape, spacing, axcodes)
    corner = np.zeros(array.shape, np.int16)
    corner[0, 0, 0] = 1  # where canonical voxel (0, 0, 0) lies in the file grid of that orientation
    file_index = np.argwhere(probe.from_canonical(corner))[0]
    origin = np.asarray(ras.canonical_affine)[:3, 3] - np.asarray(probe.affine)[:3, :3] @ file_index
    write_label(
        path, array, Geometry.from_canonical_spec(array.shape, spacing, axcodes, origin=tuple(origin))
    )


def test_evaluate_folders_scores_good_cases_and_lists_failures(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred, ref = hand_case()
    pred, ref = pred % 4, ref % 4  # values 0..3 only
    _write(ref_dir / "good.nii.gz", ref)
    _write(
        pred_dir / "good.nii.gz", pred, axcodes=("L", "P", "S")
    )  # same voxels, stored in another orientation
    _write(ref_dir / "missing.nii.gz", ref)
    _write(ref_dir / "wrongshape.nii.gz", ref)
    _write(pred_dir / "wrongshape.nii.gz", np.zeros((4, 4, 5), np.int16))
    _write(ref_dir / "alien.nii", ref)
    alien = pred.copy()
    alien[0, 0, 0] = 7
    _write(pred_dir / "alien.nii", alien)
    _write(pred_dir / "unreferenced.nii.gz", pred)

    summary, failures = evaluate_folders(
        pred_dir, ref_dir, {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
    )
    assert [c["case"] for c in summary["metric_per_case"]] == ["good"]
    liver = summary["metric_per_case"][0]["metrics"]["1"]
    assert liver["Dice"] == pytest.approx(0.5) and liver["TP"] == 4
    assert liver["ref_ml"] == pytest.approx(8 * 2.0 / 1000)  # spacing from the reference
    assert summary["mean"]["1"]["Dice"] == pytest.approx(0.5)
    by_case = {f["case"]: f for f in failures}
    assert sorted(by_case) == ["alien", "missing", "wrongshape"]
    assert "no prediction for case missing" in by_case["missing"]["error"]
    assert by_case["missing"]["file"].endswith("missing.nii.gz")
    assert (
        "not on the grid" in by_case["wrongshape"]["error"] and "(4, 4, 5)" in by_case["wrongshape"]["error"]
    )
    assert by_case["wrongshape"]["file"] == str(pred_dir / "wrongshape.nii.gz")
    assert "[7]" in by_case["alien"]["error"] and by_case["alien"]["file"] == str(pred_dir / "alien.nii")
    assert all("\n" not in f["error"] for f in failures)


def test_evaluate_folders_spacing_difference_is_a_failure(tmp_path: Path) -> None:
    pred, ref = hand_case()
    _write(tmp_path / "ref" / "c.nii.gz", ref % 4)
    _write(tmp_path / "pred" / "c.nii.gz", pred % 4, spacing=(2.0, 1.0, 1.2))
    summary, failures = evaluate_folders(tmp_path / "pred", tmp_path / "ref", {1: "a", 2: "b", 3: "c"})
    assert summary["n_cases"] == 0 and summary["mean"]["1"] == {}
    assert len(failures) == 1 and "affines differ" in failures[0]["error"]
