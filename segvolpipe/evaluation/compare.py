"""``segvol evaluate --compare``: one table and one figure over every trained variant of a dataset.

Reads what ``segvol evaluate`` wrote into each model folder ``results/DatasetXXX/{variant}__{configuration}``
(``evaluation/summary.json``, ``evaluation/rotation.json``, ``evaluation/test_predictions/predictions.json``);
evaluates nothing itself. Writes ``results/DatasetXXX/comparison.json`` and ``comparison.png`` (upright Dice,
rotated Dice and the drop per variant) and, when variants were swept over the same angles,
``dice_vs_angle.png`` with one panel per variant. Variants whose rotation settings differ are flagged: their
rotated Dice values are not comparable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import read_json, write_json
from segvolpipe.paths import resolve_dataset, results_root


@dataclass(frozen=True)
class CompareRow:
    """One model folder's numbers (NaN where it was not evaluated).

    Attributes:
        folder: The model folder.
        variant, configuration: From its name ``{variant}__{configuration}``.
        evaluated: ``evaluation/summary.json`` exists.
        source: ``test`` or ``cross-validation``.
        cases: Cases scored.
        dice: Foreground mean Dice of ``summary.json`` (text prompts, or the U-Net's classes).
        upright, rotated, drop, consistency: Foreground means of ``rotation.json``.
        seconds: Mean seconds per case (``predictions.json`` of the test predictions, else the rotation test's
            upright predictions).
        rotation_settings: Angles, prompt and mode of the rotation test.
    """

    folder: str
    variant: str
    configuration: str
    evaluated: bool
    source: str | None = None
    cases: int = 0
    dice: float = math.nan
    upright: float = math.nan
    rotated: float = math.nan
    drop: float = math.nan
    consistency: float = math.nan
    seconds: float = math.nan
    rotation_settings: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.variant}__{self.configuration}"


@dataclass
class CompareResult:
    """The rows, where they were written and what makes them less comparable."""

    dataset: str
    folder: Path
    rows: list[CompareRow]
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def run_compare(dataset: str | None = None, model: str | None = None, configuration: str | None = None,
                variant: str | None = None) -> CompareResult:
    """Compare the evaluated variants of a dataset (``-d``, the dataset of ``-m``, or the only one under results).

    Raises:
        UserError: no trained model there, or none evaluated yet (the command to run is named).
    """
    from segvolpipe.inference.model_folder import trained_folds

    base = Path(model).parent if model else results_root() / resolve_dataset(dataset, results_root())
    folders = [f for f in sorted(base.glob("*__*")) if f.is_dir() and (f / "plans.json").is_file()
               and trained_folds(f)]
    folders = [f for f in folders if (configuration is None or f.name.split("__", 1)[1] == configuration)
               and (variant is None or f.name.split("__", 1)[0] == variant)]
    if not folders:
        raise UserError("no trained model here (with these options): run 'segvol train' first", base)
    rows = [_row(f) for f in folders]
    if not any(r.evaluated for r in rows):
        raise UserError(f"no evaluated model: run 'segvol evaluate -m FOLDER' for {', '.join(f.name for f in folders)}",
                        base)
    result = CompareResult(base.name, base, rows)
    for r in rows:
        if not r.evaluated:
            result.warnings.append(f"{r.name}: not evaluated (run 'segvol evaluate -m {r.folder}')")
    # The angles must agree; prompts only between promptable variants (unet takes none); the inference mode
    # follows each variant's plans (zoom for promptable variants, sliding for unet) and is shown per row.
    rotated = [r for r in rows if r.rotation_settings]
    for key, members in (("angles_rad", rotated), ("prompt", [r for r in rotated if r.variant != "unet"])):
        values = {r.name: (r.rotation_settings or {}).get(key) for r in members}
        if len({repr(v) for v in values.values()}) > 1:
            result.warnings.append(f"rotation test {key} differ between variants (rotated Dice not comparable): "
                                   + "; ".join(f"{n}: {v}" for n, v in values.items()))
    if len({r.source for r in rows if r.evaluated}) > 1:
        result.warnings.append("some variants were scored on the test split, others on cross-validation")
    result.files = _write(result)
    return result


def _row(folder: Path) -> CompareRow:
    variant, configuration = folder.name.split("__", 1)
    evaluation = folder / "evaluation"
    if not (evaluation / "summary.json").is_file():
        return CompareRow(str(folder), variant, configuration, False)
    summary = read_json(evaluation / "summary.json")
    fields: dict[str, Any] = {"source": summary.get("source"), "cases": int(summary.get("n_cases", 0)),
                              "dice": _num(summary.get("foreground_mean", {}).get("Dice"))}
    seconds = math.nan
    if (evaluation / "rotation.json").is_file():
        rotation = read_json(evaluation / "rotation.json")
        mean = rotation.get("mean") or {}
        fields.update({k: _num(mean.get(k)) for k in ("upright", "rotated", "drop", "consistency")})
        fields["rotation_settings"] = rotation.get("settings")
        seconds = _num((rotation.get("seconds_per_case") or {}).get("upright"))
    record = evaluation / "test_predictions" / "predictions.json"
    if record.is_file():
        done = [c.get("seconds") for c in read_json(record).get("cases", {}).values() if c.get("status") == "done"]
        done = [float(s) for s in done if s is not None]
        seconds = sum(done) / len(done) if done else seconds
    return CompareRow(str(folder), variant, configuration, True, seconds=seconds, **fields)


def _write(result: CompareResult) -> list[Path]:
    from segvolpipe.evaluation.plots import dice_vs_angle, variant_comparison

    evaluated = [r for r in result.rows if r.evaluated]
    one_configuration = len({r.configuration for r in evaluated}) == 1
    label = {r.name: r.variant if one_configuration else r.name for r in evaluated}
    bars = {label[r.name]: (r.upright if math.isfinite(r.upright) else r.dice, r.rotated) for r in evaluated}
    variant_comparison(result.folder / "comparison.png", bars,
                       title=f"{result.dataset}\nDice upright, rotated and the drop")
    written = [result.folder / "comparison.png"]
    curves, angles = {}, None
    for r in evaluated:
        sweep = (read_json(Path(r.folder) / "evaluation" / "rotation.json").get("sweep")
                 if r.rotation_settings else None)
        if not sweep:
            continue
        if angles is None:
            angles = sweep["angles_deg"]
        if sweep["angles_deg"] != angles:
            result.warnings.append(f"{r.name}: swept over other angles, left out of dice_vs_angle.png")
            continue
        curves[label[r.name]] = {**{n: [_num(v) for v in vs] for n, vs in sweep["classes"].items()},
                                 "mean": [_num(v) for v in sweep["mean"]]}
    if curves and angles is not None:
        dice_vs_angle(result.folder / "dice_vs_angle.png", angles, curves,
                      title=f"{result.dataset}\nDice against rotation about S")
        written.append(result.folder / "dice_vs_angle.png")
    rows = [{**asdict(r), "name": r.name} for r in result.rows]
    write_json(result.folder / "comparison.json", {"dataset": result.dataset, "rows": rows, "warnings": result.warnings})
    return [result.folder / "comparison.json", *written]


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
