"""CLI basics: no heavy import at start-up, one-line errors, --verbose tracebacks, parallel map errors."""

from __future__ import annotations

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
    result = runner.invoke(app, ["demo", "--quick", "--np", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    for stage in ("make-phantoms", "plan-preprocess", "pseudomask"):
        assert stage in result.output
    pm = roots["preprocessed"] / "Dataset900_PhantomCT" / "pseudomasks" / "3d_lite"
    assert (pm / "report.json").exists() and len(list((pm / "qc").glob("*.png"))) == 6
