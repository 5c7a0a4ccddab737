"""Universal training over datasets with different label sets: unification, sampling, the folder contract."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.errors import UserError
from segvolpipe.training.universal import plan_universal, step_source, unify_labels, universal_name
from tests.conftest import make_blob_dataset, shrink_plans_for_training

runner = CliRunner()
TINY = ["--epochs", "1", "--iters-per-epoch", "4", "--batch-size", "1", "--np", "0", "--no-progress"]


def test_labels_unify_by_normalised_name_in_order_of_first_appearance() -> None:
    labels, vocabulary, index = unify_labels([("Liver", "Spleen", "kidney"),
                                              ("liver", "Left_Kidney", "right-kidney", "stomach")])
    assert vocabulary == ("liver", "spleen", "kidney", "left kidney", "right kidney", "stomach")
    assert labels == ("Liver", "Spleen", "kidney", "Left_Kidney", "right-kidney", "stomach")
    assert index == [(0, 1, 2), (0, 3, 4, 5)]
    with pytest.raises(UserError, match="name one structure twice"):
        unify_labels([("liver", "Liver")])


def test_universal_plans_refuse_what_cannot_be_trained_together(roots: dict[str, Path]) -> None:
    from segvolpipe.planning.plans import load_plans
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess

    make_blob_dataset(roots["raw"], 21, n=4)
    plans = load_plans(run_plan_preprocess("21", PlanPreprocessOptions(workers=1, progress=False, plan_only=True))
                       .folder / "plans.json")
    with pytest.raises(UserError, match="at least two"):
        plan_universal([plans])
    with pytest.raises(UserError, match="given twice"):
        plan_universal([plans, plans])
    assert universal_name(["Dataset017_A", "Dataset018_B"]) == "Universal_017_018"
    assert universal_name(["x"], "abdomen") == "Universal_abdomen"
    with pytest.raises(UserError, match="letters, digits"):
        universal_name(["x"], "a/b")


def test_steps_draw_datasets_in_proportion_to_their_weights() -> None:
    draws = [step_source([1.0, 3.0], seed=0, epoch=e, step=s) for e in range(20) for s in range(200)]
    share = Counter(draws)[1] / len(draws)
    assert abs(share - 0.75) < 0.03
    assert draws == [step_source([1.0, 3.0], seed=0, epoch=e, step=s) for e in range(20) for s in range(200)]
    assert step_source([5.0], 0, 0, 0) == 0


@pytest.fixture()
def two_datasets(roots: dict[str, Path]) -> tuple[str, str]:
    """Dataset 31 labels liver + spleen; dataset 32 labels liver + left kidney (its second blob), so spleen is
    unlabelled in 32 and left kidney in 31."""
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess

    make_blob_dataset(roots["raw"], 31, n=6, shape=(16, 32, 28))
    second = make_blob_dataset(roots["raw"], 32, n=6, shape=(16, 32, 28))
    meta = json.loads((second / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "Liver": 1, "Left_Kidney": 2}
    (second / "dataset.json").write_text(json.dumps(meta))
    for d in ("31", "32"):
        result = run_plan_preprocess(d, PlanPreprocessOptions(workers=1, progress=False))
        shrink_plans_for_training(result.folder / "plans.json")
    return "31", "32"


def test_universal_training_prompts_each_dataset_only_with_its_own_classes(roots, two_datasets, monkeypatch):
    from segvolpipe.training import prompts as prompts_module
    from segvolpipe.training import trainer as trainer_module

    seen: list[tuple[int, set[int]]] = []
    original = prompts_module.sample_prompts

    def record(label, pseudo, text_index, options, generator, modality=None, targets=True):
        batch = original(label, pseudo, text_index, options, generator, modality, targets)
        seen.append((tuple(text_index), {int(t) for t in batch.prompts.text.flatten().tolist() if t >= 0}))
        return batch

    # training batches draw theirs in the loader (--np 0: in this process), validation in the trainer
    monkeypatch.setattr(prompts_module, "sample_prompts", record)
    monkeypatch.setattr(trainer_module, "sample_prompts", record)
    result = runner.invoke(app, ["train", "-d", "31", "-d", "32", "--weight", "1", "--weight", "1", *TINY])
    assert result.exit_code == 0, result.output
    assert "Dataset031_Blobs: text" in result.output and "Dataset032_Blobs: text" in result.output  # the table
    folder = roots["results"] / "Universal_031_032" / "segvol__3d_lite"
    plan = json.loads((folder / "universal.json").read_text())
    assert plan["vocabulary"] == ["liver", "spleen", "left kidney"]
    assert [s["text_index"] for s in plan["sources"]] == [[0, 1], [0, 2]]
    by_source = {tuple(s["text_index"]): set(s["text_index"]) for s in plan["sources"]}
    assert {t for t, _ in seen} == {(0, 1), (0, 2)}  # training and validation batches came from both datasets
    for text_index, used in seen:
        assert used <= by_source[text_index]  # spleen is never prompted (as "not here") on dataset 32, nor kidney on 31

    # the folder contract: top-level plans for raw folders, each dataset's own plans, validation per dataset
    top = json.loads((folder / "plans.json").read_text())
    assert top["dataset"] == "Universal_031_032" and [n for n, v in top["labels"] if v > 0] == ["liver", "spleen",
                                                                                                "Left_Kidney"]
    for d in ("Dataset031_Blobs", "Dataset032_Blobs"):
        for name in ("plans.json", "dataset.json", "fingerprint.json"):
            assert (folder / "datasets" / d / name).is_file()
        summary = json.loads((folder / "fold_0" / "validation" / d / "summary.json").read_text())
        assert set(summary["text"]["mean"]) == ({"liver", "spleen"} if d.startswith("Dataset031")
                                                else {"Liver", "Left_Kidney"})
    config = json.loads((folder / "fold_0" / "config.json").read_text())
    assert config["dataset"] == "Universal_031_032" and config["model"]["vocabulary"] == plan["vocabulary"]

    again = runner.invoke(app, ["train", "-d", "31", "-d", "32", "--weight", "1", "--weight", "1", *TINY])
    assert again.exit_code == 0 and "skipped" in again.output


def test_a_universal_model_predicts_and_evaluates_as_each_of_its_datasets(roots, two_datasets):
    assert runner.invoke(app, ["train", "-d", "31", "-d", "32", *TINY]).exit_code == 0
    folder = roots["results"] / "Universal_031_032" / "segvol__3d_lite"
    images = roots["raw"] / "Dataset032_Blobs" / "imagesTr"
    out = roots["results"].parent / "pred32"
    result = runner.invoke(app, ["predict", "-i", str(images), "-o", str(out), "-m", str(folder), "-d", "32",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "predictions.json").read_text())
    assert record["settings"]["plans"] == "Dataset032_Blobs"
    assert all(set(c["classes"]) == {"Liver", "Left_Kidney"} for c in record["cases"].values())
    values = np.unique(np.asarray(nib.load(next(out.glob("*.nii.gz"))).dataobj))
    assert set(values.tolist()) <= {0, 1, 2}  # dataset 32's own label values

    found = runner.invoke(app, ["predict", "-i", str(images), "-o", str(out.parent / "by_id"), "-d", "32",
                                "--no-progress"])  # no model of dataset 32's own: the universal one that knows it
    assert found.exit_code == 0, found.output
    assert json.loads((out.parent / "by_id" / "predictions.json").read_text())["settings"]["plans"] == "Dataset032_Blobs"

    text = runner.invoke(app, ["predict", "-i", str(images), "-o", str(out.parent / "spleen32"), "-m", str(folder),
                               "-d", "32", "--text", "spleen", "--no-progress"])
    assert text.exit_code == 0, text.output  # a class another dataset labels, named by text

    missing = runner.invoke(app, ["evaluate", "-m", str(folder), "--no-rotate", "--no-progress"])
    assert missing.exit_code == 2 and "add -d" in missing.output
    scored = runner.invoke(app, ["evaluate", "-m", str(folder), "-d", "32", "--no-rotate", "--no-progress"])
    assert scored.exit_code == 0, scored.output
    summary = json.loads((folder / "evaluation" / "Dataset032_Blobs" / "summary.json").read_text())
    assert summary["source"] == "cross-validation" and set(summary["labels"].values()) == {"Liver", "Left_Kidney"}
    other = runner.invoke(app, ["predict", "-i", str(images), "-o", str(out.parent / "x"), "-m", str(folder),
                                "-d", "999", "--no-progress"])
    assert other.exit_code == 2 and "was not trained on" in other.output and "Dataset031_Blobs" in other.output


def test_universal_unet_is_refused(roots, two_datasets):
    result = runner.invoke(app, ["train", "-d", "31", "-d", "32", "--variant", "unet", *TINY])
    assert result.exit_code == 2 and "promptable" in result.output
    lone = runner.invoke(app, ["train", "-d", "31", "--weight", "2", *TINY])
    assert lone.exit_code == 2 and "several datasets" in lone.output
