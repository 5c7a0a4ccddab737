"""``segvol pseudomask`` end to end on preprocessed phantoms: contract, GT merge, idempotence, bad cases."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.io.atomic import load_npy
from segvolpipe.pseudomask.case import PseudomaskSettings

runner = CliRunner()


def _prepare(roots: dict[str, Path], cases: int = 3) -> Path:
    for args in (
        [
            "make-phantoms",
            "-d",
            "900",
            "--cases",
            str(cases),
            "--test-cases",
            "0",
            "--size",
            "32,64,64",
            "--np",
            "1",
            "--no-progress",
        ],
        ["plan-preprocess", "-d", "900", "-c", "3d_lite", "--np", "2", "--no-progress"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return roots["preprocessed"] / "Dataset900_PhantomCT"


def test_contract_gt_merge_idempotence(roots: dict[str, Path]) -> None:
    folder = _prepare(roots)
    result = runner.invoke(
        app, ["pseudomask", "--np", "2", "--no-progress"]
    )  # no -d: every dataset lacking them
    assert result.exit_code == 0, result.output
    out = folder / "pseudomasks" / "3d_lite"
    cases = [f"phantomct_{i:03d}" for i in range(3)]
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "qc",
        *(f"{c}.npy" for c in cases),
        *(f"{c}.json" for c in cases),
    }
    assert {p.name for p in (out / "qc").iterdir()} == {f"{c}.png" for c in cases}
    report = json.loads((out / "report.json").read_text())
    assert report["ground_truth_ids"]["liver"] == 1 and report["pseudo_ids_start_at"] == 8
    assert set(report["best_match_dice_mean"]) >= {"liver", "spleen"}
    assert report["schema_version"] == 1 and report["settings"]["rule"] == "percentile"
    assert report["settings"]["denoise"] == "tv" and all(c["noise_sigma"] > 0 for c in report["cases"])
    # The command's defaults are the settings' defaults (the CLI restates them as literals for an instant --help).
    defaults = asdict(PseudomaskSettings())
    assert {k: report["settings"][k] for k in defaults} == defaults
    for cid in cases:
        pm = load_npy(out / f"{cid}.npy")
        seg = load_npy(folder / "3d_lite" / f"{cid}_seg.npy")
        assert pm.dtype == np.int32 and pm.shape == seg.shape
        np.testing.assert_array_equal(pm[seg > 0], seg[seg > 0])  # ground truth overwrites
        pseudo_ids = np.unique(pm[pm > 7])
        assert pm.min() >= -1 and pseudo_ids.size > 0
        np.testing.assert_array_equal(pseudo_ids, np.arange(8, 8 + pseudo_ids.size))  # consecutive
    assert "best-match Dice" in result.output and "liver" in result.output
    # idempotent: nothing to do without -d, and with -d every case is unchanged
    again = runner.invoke(app, ["pseudomask", "--no-progress"])
    assert again.exit_code == 0 and "already has pseudo-masks" in again.output
    before = (out / f"{cases[0]}.npy").stat().st_mtime_ns
    again = runner.invoke(app, ["pseudomask", "-d", "900", "--no-progress"])
    assert again.exit_code == 0 and "0 made, 3 unchanged" in again.output
    assert (out / f"{cases[0]}.npy").stat().st_mtime_ns == before
    # a different setting redoes the work, deterministically
    redo = runner.invoke(
        app, ["pseudomask", "-d", "900", "--rule", "fh", "--no-qc", "--np", "1", "--no-progress"]
    )
    assert redo.exit_code == 0 and "3 made" in redo.output
    first = load_npy(out / f"{cases[1]}.npy")
    runner.invoke(
        app,
        [
            "pseudomask",
            "-d",
            "900",
            "--rule",
            "fh",
            "--no-qc",
            "--np",
            "2",
            "--overwrite",
            "--no-progress",
        ],
    )
    np.testing.assert_array_equal(load_npy(out / f"{cases[1]}.npy"), first)


def test_missing_and_corrupt_cases_are_reported_others_done(roots: dict[str, Path]) -> None:
    folder = _prepare(roots, cases=3)
    (folder / "3d_lite" / "phantomct_000.npy").unlink()
    (folder / "3d_lite" / "phantomct_001.npy").write_bytes(b"\x93NUMPY garbage")
    result = runner.invoke(app, ["pseudomask", "-d", "900", "--no-qc", "--np", "2", "--no-progress"])
    assert result.exit_code == 2
    assert "phantomct_000.npy: preprocessed file missing" in result.output
    assert "phantomct_001.npy: corrupt preprocessed array" in result.output
    assert "Traceback" not in result.output
    out = folder / "pseudomasks" / "3d_lite"
    assert (out / "phantomct_002.npy").exists()
    report = json.loads((out / "report.json").read_text())
    assert [f[0] for f in report["failed"]] == ["phantomct_000", "phantomct_001"]  # sorted by case


def test_bad_options() -> None:
    result = runner.invoke(app, ["pseudomask", "--rule", "fz"])
    assert result.exit_code == 2 and "'fz' is not one of" in result.output
    result = runner.invoke(app, ["pseudomask", "--scale", "-1"])
    assert result.exit_code == 2 and "k > 0" in result.output
    result = runner.invoke(app, ["pseudomask", "--denoise", "gauss"])
    assert result.exit_code == 2 and "'gauss' is not one of" in result.output
    result = runner.invoke(app, ["pseudomask", "--tv-weight", "0"])
    assert result.exit_code == 2 and "--tv-weight must be > 0" in result.output


def test_working_grid_maps_back_to_the_case_grid(roots: dict[str, Path]) -> None:
    folder = _prepare(roots, cases=2)
    result = runner.invoke(app, ["pseudomask", "-d", "900", "--working-grid", "16,32,32", "--diagonals", "--no-qc",
                                 "--min-fraction", "0.00001", "--np", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = folder / "pseudomasks" / "3d_lite"
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["working_grid"] == [16, 32, 32] and report["settings"]["diagonals"] is True
    for cid in ("phantomct_000", "phantomct_001"):
        pm = load_npy(out / f"{cid}.npy")
        seg = load_npy(folder / "3d_lite" / f"{cid}_seg.npy")
        assert pm.shape == seg.shape
        assert (pm > 7).any()  # pseudo regions survive the round trip through the working grid


def test_min_size_default_scales_segvols_count_to_the_volume() -> None:
    from segvolpipe.pseudomask.case import MIN_SIZE_FLOOR, PseudomaskSettings

    auto = PseudomaskSettings()
    assert auto.min_size_for(256 * 256 * 32) == 1000  # SegVol's own grid and count
    assert auto.min_size_for(64 * 128 * 128) == 500
    assert auto.min_size_for(76 * 80 * 80) == 232
    assert auto.min_size_for(10) == MIN_SIZE_FLOOR
    assert PseudomaskSettings(min_size=77).min_size_for(64 * 128 * 128) == 77
    assert auto.key() != PseudomaskSettings(min_size=500).key()  # the hash tells the two apart
