"""``segvol models``: the table for a dataset's configuration, the reference model, the load check, errors."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from segvolpipe.cli import app
from tests.conftest import make_blob_dataset

runner = CliRunner()


def _plans(roots: dict[str, Path]) -> None:
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess

    make_blob_dataset(roots["raw"], 7, n=3)
    run_plan_preprocess("7", PlanPreprocessOptions(workers=1, progress=False, plan_only=True))


def test_models_lists_every_variant_with_counts(roots):
    _plans(roots)
    result = runner.invoke(app, ["models", "-d", "7", "-c", "3d_lite"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "Dataset007" in result.output and "3d_lite" in result.output
    for variant in ("segvol", "so3", "prior", "unet"):
        assert f"│ {variant} " in result.output
    assert "100.0 %" in result.output  # segvol and unet train everything


def test_models_without_dataset_shows_segvols_reference(roots):
    result = runner.invoke(app, ["models", "--variant", "segvol"], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "SegVol reference" in result.output and "32×256×256" in result.output
    assert "117.72 M" in result.output


def test_models_pretrained_check_prints_one_table(roots, tmp_path):
    _plans(roots)
    from segvolpipe.models.registry import build_model
    from segvolpipe.models.spec import spec_from_plans
    from segvolpipe.planning.plans import load_plans

    plans = load_plans(next((roots["preprocessed"]).glob("Dataset007*")) / "plans.json")
    model = build_model(spec_from_plans(plans, "3d_lite"))
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "ours.pth")
    ok = runner.invoke(app, ["models", "-d", "7", "-c", "3d_lite", "--variant", "so3", "--pretrained",
                             str(tmp_path / "ours.pth")], terminal_width=200)
    assert ok.exit_code == 0, ok.output
    assert "image_encoder" in ok.output and "loaded" in ok.output and "variant's new layers" in ok.output

    (tmp_path / "bad.pth").write_bytes(b"garbage")
    bad = runner.invoke(app, ["models", "-d", "7", "--pretrained", str(tmp_path / "bad.pth")], terminal_width=200)
    assert bad.exit_code == 2
    assert "bad.pth" in bad.output and "not a readable PyTorch checkpoint" in bad.output
    assert "Traceback" not in bad.output


def test_unknown_variant_and_configuration_are_one_line_errors(roots):
    _plans(roots)
    result = runner.invoke(app, ["models", "-d", "7", "--variant", "so4"])
    assert result.exit_code == 2 and "did you mean 'so3'" in result.output
    result = runner.invoke(app, ["models", "-d", "7", "-c", "3d_lit"])
    assert result.exit_code == 2 and "did you mean '3d_lite'" in result.output
    result = runner.invoke(app, ["models", "-d", "8"])
    assert result.exit_code == 2 and "no dataset" in result.output
