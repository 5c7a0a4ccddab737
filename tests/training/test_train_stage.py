"""``segvol train``: the output contract, exact resume, idempotence, variant initialisation, DDP, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from segvolpipe.cli import app
from tests.conftest import make_blob_dataset, shrink_plans_for_training

runner = CliRunner()
TINY = ["--epochs", "2", "--iters-per-epoch", "2", "--batch-size", "1", "--np", "0", "--no-progress"]


@pytest.fixture()
def dataset(roots: dict[str, Path]) -> str:
    """A tiny preprocessed CT dataset (8 cases, two classes) with a small 3d_lite model forced by the plans."""
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess

    make_blob_dataset(roots["raw"], 11, n=8, shape=(16, 32, 28))
    result = run_plan_preprocess("11", PlanPreprocessOptions(workers=1, progress=False))
    shrink_plans_for_training(result.folder / "plans.json")
    return "11"


def _fold(roots, variant="segvol", fold="0") -> Path:
    return roots["results"] / "Dataset011_Blobs" / f"{variant}__3d_lite" / f"fold_{fold}"


def test_train_writes_the_fold_contract_and_skips_a_finished_fold(roots, dataset):
    result = runner.invoke(app, ["train", "-d", dataset, *TINY])
    assert result.exit_code == 0, result.output
    fold = _fold(roots)
    for name in ("config.json", "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt",
                 "training_log.jsonl", "progress.png", "validation/summary.json"):
        assert (fold / name).exists(), name
    assert (fold.parent / "plans.json").exists() and (fold.parent / "dataset.json").exists()
    log = [json.loads(x) for x in (fold / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and all(r["val_dice"] is not None for r in log)
    assert all(r["samples_per_s"] > 0 and r["peak_mib"] > 0 for r in log)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary) >= {"text", "box+text"} and "foreground_mean" in summary["text"]
    cases = json.loads((roots["preprocessed"] / "Dataset011_Blobs" / "splits.json").read_text())["folds"][0]["val"]
    assert sorted(p.name for p in (fold / "validation").glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in cases)
    payload = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert payload["state"]["epoch"] == 2 and payload["state"]["step"] == 4
    # the image path's class head (background + 2 classes from 4 channels) trained beside the prompts, with the
    # plans' weight: the last two parameters of the optimiser's image-path group have moments
    assert json.loads((fold / "config.json").read_text())["detail_aux_weight"] == 0.5
    head = payload["model"]["image_detail.classes.weight"]
    opt = payload["optimizer"]
    weight, bias = (opt["state"][i]["exp_avg"] for i in opt["param_groups"][-1]["params"][-2:])
    assert weight.shape == head.shape == (3, 4, 1, 1, 1) and weight.abs().sum() > 0 and bias.abs().sum() > 0

    again = runner.invoke(app, ["train", "-d", dataset, *TINY])
    assert again.exit_code == 0 and "skipped" in again.output
    other = runner.invoke(app, ["train", "-d", dataset, *TINY[:1], "3", *TINY[2:]])
    assert other.exit_code == 2 and "--resume continues it, --overwrite starts again" in other.output


def test_a_fold_whose_validation_failed_is_validated_by_the_next_run(roots, dataset):
    cases = json.loads((roots["preprocessed"] / "Dataset011_Blobs" / "splits.json").read_text())["folds"][0]["val"]
    image = roots["raw"] / "Dataset011_Blobs" / "imagesTr" / f"{cases[0]}_0000.nii.gz"
    hidden = image.with_name("hidden.nii.gz")
    image.rename(hidden)
    failed = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", *TINY])
    assert failed.exit_code == 2 and f"{cases[0]}_0000.nii.gz" in failed.output
    fold = _fold(roots, "unet")
    assert (fold / "checkpoint_final.pt").exists() and not (fold / "validation" / "summary.json").exists()

    hidden.rename(image)
    again = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", *TINY])
    assert again.exit_code == 0, again.output
    assert "validated" in again.output
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["unet"]["per_case"]) == set(cases)
    log = [json.loads(x) for x in (fold / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]  # not trained again
    # a finished, validated fold is skipped without opening the training arrays (gone here)
    train_case = json.loads((roots["preprocessed"] / "Dataset011_Blobs" / "splits.json").read_text())["folds"][0]["train"][0]
    (roots["preprocessed"] / "Dataset011_Blobs" / "3d_lite" / f"{train_case}.npy").unlink()
    skipped = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", *TINY])
    assert skipped.exit_code == 0 and "skipped" in skipped.output, skipped.output


def test_an_interrupted_run_resumed_equals_the_uninterrupted_run(roots, dataset, monkeypatch):
    from segvolpipe.training import trainer as trainer_module

    assert runner.invoke(app, ["train", "-d", dataset, *TINY, "--fold", "1"]).exit_code == 0
    reference = torch.load(_fold(roots, fold="1") / "checkpoint_final.pt", weights_only=True)["model"]

    original = trainer_module.Trainer._after_epoch

    def interrupt_after_first_epoch(self, record):
        original(self, record)
        if record.epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "_after_epoch", interrupt_after_first_epoch)
    stopped = runner.invoke(app, ["train", "-d", dataset, *TINY, "--fold", "2"])
    assert stopped.exit_code != 0 and not (_fold(roots, fold="2") / "checkpoint_final.pt").exists()
    monkeypatch.setattr(trainer_module.Trainer, "_after_epoch", original)
    # fold 2 trains on other cases than fold 1: compare against an uninterrupted fold 2 instead
    resumed = runner.invoke(app, ["train", "-d", dataset, *TINY, "--fold", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    resumed_weights = torch.load(_fold(roots, fold="2") / "checkpoint_final.pt", weights_only=True)["model"]
    straight = runner.invoke(app, ["train", "-d", dataset, *TINY, "--fold", "2", "--overwrite"])
    assert straight.exit_code == 0
    straight_weights = torch.load(_fold(roots, fold="2") / "checkpoint_final.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in straight_weights)
    assert not all(torch.equal(reference[k], straight_weights[k]) for k in straight_weights)


def test_adapted_variants_need_a_trained_segvol_first(roots, dataset):
    result = runner.invoke(app, ["train", "-d", dataset, "--variant", "so3", *TINY])
    assert result.exit_code == 2
    assert "run 'segvol train -d Dataset011_Blobs -c 3d_lite --fold 0 --variant segvol' first" in result.output
    assert runner.invoke(app, ["train", "-d", dataset, *TINY]).exit_code == 0
    so3 = runner.invoke(app, ["train", "-d", dataset, "--variant", "so3", *TINY])
    assert so3.exit_code == 0, so3.output
    base = torch.load(_fold(roots) / "checkpoint_final.pt", weights_only=True)["model"]
    tuned = torch.load(_fold(roots, "so3") / "checkpoint_final.pt", weights_only=True)["model"]
    frozen = [k for k in base if "attn.out_proj" not in k]
    assert all(torch.equal(base[k], tuned[k]) for k in frozen)  # the base stayed frozen
    assert any(k.startswith("image_encoder.token_adapter.") for k in tuned)


def test_unet_trains_in_bf16_where_native_and_in_float32_with_no_bf16(roots, dataset, monkeypatch):
    from segvolpipe.models.unet import UNetModel
    from segvolpipe.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "native_bf16", lambda device: True)  # whatever this CPU is
    autocast_seen: list[bool] = []
    forward = UNetModel.forward

    def recording(self, image):
        if self.training:
            autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, image)

    monkeypatch.setattr(UNetModel, "forward", recording)
    result = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", *TINY])
    assert result.exit_code == 0, result.output
    summary = json.loads((_fold(roots, "unet") / "validation" / "summary.json").read_text())
    assert "unet" in summary
    assert json.loads((_fold(roots, "unet") / "config.json").read_text())["bf16"] is True
    assert autocast_seen and all(autocast_seen)

    autocast_seen.clear()
    result = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", "--no-bf16", "--overwrite", *TINY])
    assert result.exit_code == 0, result.output
    assert json.loads((_fold(roots, "unet") / "config.json").read_text())["bf16"] is False
    assert autocast_seen and not any(autocast_seen)


def test_checkpoint_errors_are_one_line(roots, dataset):
    assert runner.invoke(app, ["train", "-d", dataset, *TINY]).exit_code == 0
    fold = _fold(roots)
    longer = runner.invoke(app, ["train", "-d", dataset, *TINY[:1], "3", *TINY[2:], "--resume"])
    assert longer.exit_code == 0, longer.output  # a finished run continued for one more epoch
    assert torch.load(fold / "checkpoint_final.pt", weights_only=True)["state"]["step"] == 6
    stored = json.loads((fold / "config.json").read_text())
    older = {**stored, "sampling": {**stored["sampling"], "mirror_axes": [0, 1, 2]}}  # a run from older plans
    (fold / "config.json").write_text(json.dumps(older))
    result = runner.invoke(app, ["train", "-d", dataset, *TINY[:1], "4", *TINY[2:], "--resume"])
    assert result.exit_code == 2 and "(sampling.mirror_axes)" in result.output
    (fold / "config.json").write_text(json.dumps(stored))
    (fold / "checkpoint_latest.pt").write_bytes(b"PK\x03\x04 truncated")
    result = runner.invoke(app, ["train", "-d", dataset, *TINY[:1], "4", *TINY[2:], "--resume"])
    assert result.exit_code == 2 and "corrupted or unreadable checkpoint" in result.output
    result = runner.invoke(app, ["train", "-d", dataset, "--variant", "so3", "--init",
                                 str(roots["raw"] / "nothing"), *TINY])
    assert result.exit_code == 2 and "--init found no checkpoint_final.pt" in result.output
    assert runner.invoke(app, ["train", "-d", dataset, "--time-budget", "ten", *TINY]).exit_code == 2
    assert runner.invoke(app, ["train", "-d", dataset, "--fold", "7", *TINY]).exit_code == 2
    prior = runner.invoke(app, ["train", "-d", dataset, "--variant", "prior", *TINY])
    assert prior.exit_code == 2 and "train it on an MRI dataset" in prior.output


def test_two_cpu_processes_keep_identical_weights(roots, dataset):
    # under a budget every step also asks rank 0 whether the budget is spent (a broadcast each rank must join)
    result = runner.invoke(app, ["train", "-d", dataset, "--gpus", "2", "--device", "cpu", "--time-budget", "600",
                                 *TINY])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (_fold(roots) / "training_log.jsonl").read_text().splitlines()]
    assert {"ranks": 2, "ranks_identical": True} in lines
    payload = torch.load(_fold(roots) / "checkpoint_final.pt", weights_only=True)
    assert payload["state"]["step"] == 4  # every rank took the same 2 × 2 steps


def test_a_budget_shorter_than_an_epoch_stops_inside_it(roots, dataset):
    # 0.01 s is spent by the first step: the first epoch (4 steps, whose length is not known before it ends) stops
    # there instead of running to its end; the schedule ends where training did
    result = runner.invoke(app, ["train", "-d", dataset, "--time-budget", "0.01", "--epochs", "5",
                                 "--iters-per-epoch", "4", *TINY[4:]])
    assert result.exit_code == 0, result.output
    assert "time budget reached during epoch 0 (1 of 4 steps)" in result.output
    state = torch.load(_fold(roots) / "checkpoint_final.pt", weights_only=True)["state"]
    assert (state["epoch"], state["step"], state["total_steps"]) == (1, 1, 1)
    log = [json.loads(x) for x in (_fold(roots) / "training_log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["steps"], r["cut"]) for r in log] == [(0, 1, True)]
    config = json.loads((_fold(roots) / "config.json").read_text())
    assert config["time_budget_s"] == 0.01 and config["epochs"] == 5
    assert (_fold(roots) / "validation" / "summary.json").is_file()
    again = runner.invoke(app, ["train", "-d", dataset, "--time-budget", "0.01", "--epochs", "5",
                                "--iters-per-epoch", "4", *TINY[4:]])
    assert again.exit_code == 0 and "skipped" in again.output  # a run the budget ended is a finished run


def test_a_budget_that_holds_whole_epochs_ends_at_an_epoch_boundary(roots, dataset):
    result = runner.invoke(app, ["train", "-d", dataset, "--time-budget", "600", *TINY])
    assert result.exit_code == 0, result.output
    log = [json.loads(x) for x in (_fold(roots) / "training_log.jsonl").read_text().splitlines()]
    assert [(r["steps"], r["cut"]) for r in log] == [(2, False), (2, False)]  # --epochs 2 caps it


def test_the_budget_is_refitted_from_the_latest_epoch():
    from segvolpipe.training.trainer import budget_total_steps

    # a busy start: two 60 s epochs of a 600 s budget leave room for 8 of them ...
    assert budget_total_steps(2, 120.0, 60.0, 600.0, 10, 10_000) == 100
    # ... and once epochs take 20 s, the rest of the budget holds 18 more, not 6
    assert budget_total_steps(4, 160.0, 20.0, 600.0, 10, 10_000) == 260
    assert budget_total_steps(4, 700.0, 20.0, 600.0, 10, 10_000) == 40  # over budget: never below what is done
    assert budget_total_steps(4, 160.0, 20.0, 600.0, 10, 50) == 50  # --epochs caps it


def test_loader_workers_default_follows_the_device(monkeypatch) -> None:
    """--np wins; by default 2 on the CPU, and on CUDA all but one of the process's share of the CPUs (≥ 2, ≤ 12):
    there augmentation, not the model, limits a step (BENCHMARKS.md, "On one H100")."""
    from segvolpipe import parallel
    from segvolpipe.training.stage import loader_workers

    monkeypatch.setattr(parallel, "default_workers", lambda: 16)
    assert loader_workers(5, "cuda") == 5 and loader_workers(0, "cpu") == 0
    assert loader_workers(None, "cpu") == 2
    assert loader_workers(None, "cuda") == 12  # 15, capped at nnU-Net's 12
    assert loader_workers(None, "cuda", gpus=4) == 3
    monkeypatch.setattr(parallel, "default_workers", lambda: 2)
    assert loader_workers(None, "cuda") == 2


def test_augmentation_levels_reach_the_config_and_the_wide_rotations_need_the_full_one(roots, dataset):
    plans_path = roots["preprocessed"] / "Dataset011_Blobs" / "plans.json"
    plans = json.loads(plans_path.read_text())
    assert plans["configurations"]["3d_lite"]["trainer"]["augmentation"] == "full"  # nnU-Net's, the default
    result = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", "--augmentation", "mirror", *TINY])
    assert result.exit_code == 0, result.output
    sampling = json.loads((_fold(roots, "unet") / "config.json").read_text())["sampling"]
    assert (sampling["augment"], sampling["transforms"]) == (True, False)

    plans["configurations"]["3d_lite"]["trainer"]["augmentation"] = "none"  # a plans.json edited by hand
    plans_path.write_text(json.dumps(plans))
    result = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", "--overwrite", *TINY])
    assert result.exit_code == 0, result.output
    assert json.loads((_fold(roots, "unet") / "config.json").read_text())["sampling"]["augment"] is False

    wide = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", "--rotation-aug", "--overwrite", *TINY])
    assert wide.exit_code == 2 and "the augmentation is 'none' (the plans')" in wide.output
    assert "use --augmentation full" in wide.output
    wide = runner.invoke(app, ["train", "-d", dataset, "--variant", "unet", "--rotation-aug", "--augmentation",
                               "mirror", "--overwrite", *TINY])
    assert wide.exit_code == 2 and "the augmentation is 'mirror':" in wide.output
    typo = runner.invoke(app, ["train", "-d", dataset, "--augmentation", "mirrors", *TINY])
    assert typo.exit_code == 2 and "did you mean 'mirror'?" in typo.output


def test_the_command_lines_augmentation_choices_are_the_plans():
    from segvolpipe.cli_options import Augmentation
    from segvolpipe.planning.plans import AUGMENTATIONS

    assert tuple(a.value for a in Augmentation) == AUGMENTATIONS


def test_promptable_models_do_not_mirror_by_default_and_say_why_mirror_alone_is_refused(roots, dataset):
    from segvolpipe.models.spec import spec_from_plans
    from segvolpipe.planning.plans import load_plans
    from segvolpipe.training.config import config_from_plans

    plans = load_plans(roots["preprocessed"] / "Dataset011_Blobs" / "plans.json")
    trainer = plans.configuration("3d_lite").trainer
    assert (trainer.mirror_axes, trainer.promptable_mirror_axes) == ((2,), ())
    for variant, axes in (("unet", (2,)), ("segvol", ())):
        config = config_from_plans(plans, spec_from_plans(plans, "3d_lite", variant), "0")
        assert config.sampling.mirror_axes == axes and config.sampling.augment
    result = runner.invoke(app, ["train", "-d", dataset, "--augmentation", "mirror", *TINY])
    assert result.exit_code == 2 and "promptable_mirror_axes, which are empty" in result.output
    assert "use --augmentation none" in result.output
