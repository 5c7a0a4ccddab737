"""``segvol make-phantoms`` through the CLI, then ``plan-preprocess`` on the MRI variant."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from segvolpipe.cli import app

runner = CliRunner()


def test_make_phantoms_mri_then_plan_preprocess(roots: dict[str, Path]) -> None:
    args = ["make-phantoms", "-d", "31", "--cases", "3", "--test-cases", "1", "--modality", "mri",
            "--contrast", "t2", "--size", "16,32,32", "--np", "2", "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    folder = roots["raw"] / "Dataset031_PhantomMRI"
    spec = json.loads((folder / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "MRI"} and spec["numTraining"] == 3
    assert len(list((folder / "imagesTs").iterdir())) == 1
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "exists (unchanged)" in again.output
    result = runner.invoke(app, ["plan-preprocess", "-d", "31", "-c", "3d_lite", "--np", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    plans = json.loads((roots["preprocessed"] / "Dataset031_PhantomMRI" / "plans.json").read_text())
    assert plans["normalization"][0]["scheme"] == "zscore"


def test_make_phantoms_bad_arguments() -> None:
    bad_size = runner.invoke(app, ["make-phantoms", "--size", "4,32"])
    assert bad_size.exit_code == 2 and "--size must be three integers" in bad_size.output
    bad_modality = runner.invoke(app, ["make-phantoms", "--modality", "pet"])
    assert bad_modality.exit_code == 2 and "'pet' is not one of" in bad_modality.output
    bad_organ = runner.invoke(app, ["make-phantoms", "--labels", "livr"])
    assert bad_organ.exit_code == 2 and "did you mean 'liver'" in bad_organ.output
