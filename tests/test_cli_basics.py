"""CLI basics: no heavy import at start-up, one-line errors, --verbose tracebacks, parallel map errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.errors import UserError
from segvolpipe.parallel import map_cases

runner = CliRunner()


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; import segvolpipe.cli as c; "
        "heavy = [m for m in ('numpy', 'torch', 'nibabel', 'scipy', 'monai', 'escnn') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_user_error_is_one_line_and_verbose_adds_traceback(roots: dict[str, Path]) -> None:
    plain = runner.invoke(app, ["plan-preprocess", "-d", "5"])
    assert plain.exit_code == 2
    assert [line for line in plain.output.splitlines() if line.strip()] == [
        f"error: {roots['raw']}: no dataset '5'; existing: none"
    ]
    assert "Traceback" not in plain.output
    verbose = runner.invoke(app, ["--verbose", "plan-preprocess", "-d", "5"])
    assert verbose.exit_code == 2 and "Traceback" in verbose.output


def _maybe_fail(x: int) -> int:
    if x == 2:
        raise UserError("bad case", f"case_{x}.nii.gz")
    return x * 10


def test_map_cases_keeps_going_after_a_user_error() -> None:
    for workers in (1, 2):
        outcomes = sorted(map_cases(_maybe_fail, [1, 2, 3], workers=workers, progress=False), key=lambda o: o.item)
        assert [o.value for o in outcomes] == [10, None, 30]
        assert outcomes[1].error == "case_2.nii.gz: bad case"


def test_quick_demo_runs_every_stage(roots: dict[str, Path], monkeypatch) -> None:
    monkeypatch.chdir(roots["raw"].parent)
    result = runner.invoke(app, ["demo", "--quick", "--np", "2", "--no-progress", "--segvol-time", "2s",
                                 "--so3-time", "2s"])
    assert result.exit_code == 0, result.output
    for stage in ("make-phantoms", "plan-preprocess", "pseudomask", "train segvol", "train so3",
                  "predict + evaluate segvol", "predict + evaluate so3", "held-out test case", "so3 rotated"):
        assert stage in result.output
    pm = roots["preprocessed"] / "Dataset900_PhantomCT" / "pseudomasks" / "3d_lite"
    assert (pm / "report.json").exists() and len(list((pm / "qc").glob("*.png"))) == 6
    results = roots["results"] / "Dataset900_PhantomCT"
    so3_config = json.loads((results / "so3__3d_lite" / "fold_0" / "config.json").read_text())
    assert so3_config["time_budget_s"] == 2.0 and so3_config["variant"] == "so3"
    for variant in ("segvol", "so3"):
        evaluation = results / f"{variant}__3d_lite" / "evaluation"
        summary = json.loads((evaluation / "summary.json").read_text())
        rotation = json.loads((evaluation / "rotation.json").read_text())
        assert summary["source"] == "test" and summary["n_cases"] == 2 and rotation["n_cases"] == 2
        assert sorted(c["case"] for c in summary["metric_per_case"]) == ["phantomct_006", "phantomct_007"]
        assert (evaluation / "rotation_bars.png").is_file()
    # a rerun trains nothing again and reuses the predictions
    again = runner.invoke(app, ["demo", "--quick", "--np", "2", "--no-progress", "--segvol-time", "2s",
                                "--so3-time", "2s"])
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") >= 2 and "already predicted" in again.output
