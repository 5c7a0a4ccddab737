"""``segvol train --init`` across datasets (CT → MRI): the transferred spec, the row-wise weight transfer, the
``prior`` variant's bit-for-bit CT outputs, the plain-LoRA baseline, and both runs end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segvolpipe.errors import UserError
from segvolpipe.io.nifti import Geometry
from segvolpipe.models.prompt_encoder import Prompts
from segvolpipe.models.registry import build_model
from segvolpipe.models.spec import MRI, ModelSpec, PriorOptions
from segvolpipe.planning.plans import ViTPlan
from segvolpipe.training.checkpoint import TrainState, check_same_spec, load_checkpoint, save_checkpoint
from segvolpipe.training.transfer import load_transferred, transfer_spec
from tests.conftest import make_blob_dataset, shrink_plans_for_training
from tests.models.conftest import TINY_DECODER, TINY_UNET, TINY_VIT, mixed_prompts, tiny_spec

MRI_VIT = ViTPlan((8, 32, 32), (4, 8, 8), 64, 128, 2, 4)  # another input size than the CT model's


def _mri_spec(variant: str = "segvol", in_channels: int = 1) -> ModelSpec:
    """The MRI dataset's own spec: liver and kidneys (kidneys: a name the CT model does not know)."""
    return ModelSpec(variant, "3d_lite", in_channels, MRI_VIT, TINY_DECODER, TINY_UNET, ("Liver", "Kidneys"),
                     ("liver", "kidneys"), modality=MRI)


@pytest.fixture()
def ct_checkpoint(tmp_path: Path) -> Path:
    """A (seeded, untrained) tiny CT segvol model knowing liver, spleen and left kidney."""
    torch.manual_seed(0)
    spec = tiny_spec()
    path = tmp_path / "ct" / "checkpoint_final.pt"
    save_checkpoint(path, build_model(spec), None, TrainState(), {"dataset": "Dataset021_CT"}, spec.to_json())
    return path


def _loaded(path: Path, spec: ModelSpec) -> torch.nn.Module:
    model = build_model(spec)
    load_transferred(model, path)
    return model.eval()


def _ct_model(path: Path) -> torch.nn.Module:
    model = build_model(tiny_spec())
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def _mri_prompts(index: int) -> Prompts:
    """The CT prompts of :func:`mixed_prompts` on MRI images, the first one asking for vocabulary ``index``."""
    prompts = mixed_prompts([1, 1])
    return replace(prompts, text=torch.tensor([[index, 1], [-1, index]]))


def test_transfer_spec_keeps_the_init_vocabulary_and_sizes():
    spec = transfer_spec(tiny_spec(), _mri_spec(), "prior")
    assert spec.vocabulary == ("liver", "spleen", "left kidney", "kidneys")
    assert spec.labels == ("Liver", "Kidneys") and spec.modality == MRI and spec.variant == "prior"
    assert spec.vit == TINY_VIT and spec.configuration == "3d_lite" and spec.lora is None
    assert [spec.text_index(n) for n in spec.labels] == [0, 3]
    lora = transfer_spec(tiny_spec(), _mri_spec(), "segvol", lora=True)
    assert lora.lora == PriorOptions().lora and lora.vocabulary == spec.vocabulary
    assert ModelSpec.from_json(json.loads(json.dumps(lora.to_json()))) == lora


def test_transfer_spec_refuses_models_that_share_no_weights():
    with pytest.raises(UserError, match="takes 1 image channel"):
        transfer_spec(tiny_spec(), _mri_spec(in_channels=2), "prior")
    with pytest.raises(UserError, match="U-Net and promptable models share no weights"):
        transfer_spec(tiny_spec(), _mri_spec("unet"), "unet")
    with pytest.raises(UserError, match="--lora is the plain-LoRA segvol baseline"):
        transfer_spec(tiny_spec(), _mri_spec(), "prior", lora=True)


def test_load_transferred_copies_the_known_rows_and_keeps_the_new_ones(ct_checkpoint):
    spec = transfer_spec(tiny_spec(), _mri_spec(), "prior")
    torch.manual_seed(1)
    fresh = build_model(spec).state_dict()
    torch.manual_seed(1)
    model = build_model(spec)
    report = load_transferred(model, ct_checkpoint)
    ct, own = load_checkpoint(ct_checkpoint)["model"], model.state_dict()
    rows = own["text_encoder.embeddings.weight"]
    assert torch.equal(rows[:3], ct["text_encoder.embeddings.weight"])
    assert torch.equal(rows[3:], fresh["text_encoder.embeddings.weight"][3:])
    assert all(torch.equal(own[k], v) for k, v in ct.items() if k != "text_encoder.embeddings.weight")
    assert not report.missing and all("lora_" in k or k.startswith("context_prior.") for k in report.new_in_variant)


def test_a_transferred_prior_model_is_the_ct_model_on_ct_prompts_before_and_after_training(ct_checkpoint):
    spec = transfer_spec(tiny_spec(), _mri_spec(), "prior")
    prior, ct = _loaded(ct_checkpoint, spec), _ct_model(ct_checkpoint)
    image = torch.randn(2, 1, *TINY_VIT.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = ct(image, mixed_prompts([0, 0]))
        assert torch.equal(prior(image, mixed_prompts([0, 0])), reference)
        before = prior(image, _mri_prompts(3))
    prior.train()
    optimizer = torch.optim.AdamW([p for p in prior.parameters() if p.requires_grad], lr=1e-2)
    prior(image, _mri_prompts(3)).square().mean().backward()  # one step on MRI rows, "kidneys" a new name
    optimizer.step()
    prior.eval()
    with torch.no_grad():
        assert torch.equal(prior(image, mixed_prompts([0, 0])), reference)
        assert (prior(image, _mri_prompts(3)) - before).abs().max() > 1e-4


def test_the_lora_baseline_trains_only_its_adapters_on_a_frozen_base(ct_checkpoint):
    spec = transfer_spec(tiny_spec(), _mri_spec(), "segvol", lora=True)
    model, ct = _loaded(ct_checkpoint, spec), _ct_model(ct_checkpoint)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    image = torch.randn(2, 1, *TINY_VIT.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for modality in ([0, 0], [1, 1]):  # ungated: zero-initialised adapters on every row
            assert torch.equal(model(image, mixed_prompts(modality)), ct(image, mixed_prompts(modality)))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # lora_B moves first, then lora_A's gradient is non-zero
        optimizer.zero_grad()
        model(image, _mri_prompts(3)).square().mean().backward()
        optimizer.step()
    model.eval()
    state, base = model.state_dict(), load_checkpoint(ct_checkpoint)["model"]
    assert all(torch.equal(state[k], v) for k, v in base.items() if k != "text_encoder.embeddings.weight")
    assert torch.equal(state["text_encoder.embeddings.weight"][:3], base["text_encoder.embeddings.weight"])
    with torch.no_grad():
        assert (model(image, mixed_prompts([0, 0])) - ct(image, mixed_prompts([0, 0]))).abs().max() > 1e-4


def test_a_lora_checkpoint_loads_back_for_prediction(ct_checkpoint, tmp_path):
    from segvolpipe.inference.model_folder import load_fold_models

    spec = transfer_spec(tiny_spec(), _mri_spec(), "segvol", lora=True)
    model = _loaded(ct_checkpoint, spec)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.add_(0.01)
    folder = tmp_path / "segvol__3d_lite"
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pt", model, None, TrainState(), {}, spec.to_json())
    loaded_spec, models = load_fold_models(folder, None, "final", torch.device("cpu"))
    assert loaded_spec == spec
    state = models[0].model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_checkpoints_from_before_the_lora_field_still_match_their_spec(ct_checkpoint):
    payload = load_checkpoint(ct_checkpoint)
    old = {k: v for k, v in payload["spec"].items() if k != "lora"}  # as written before ModelSpec.lora
    assert ModelSpec.from_json(old) == tiny_spec()
    check_same_spec({**payload, "spec": old}, tiny_spec().to_json(), ct_checkpoint)
    with pytest.raises(UserError, match="another model"):
        check_same_spec({**payload, "spec": old}, transfer_spec(tiny_spec(), tiny_spec(), "segvol", True).to_json(),
                        ct_checkpoint)


# --- end to end: segvol on a CT dataset, then prior and the LoRA baseline on an MRI dataset from it ---------------


def _preprocessed(roots: dict[str, Path], dataset_id: int, modality: str, labels: dict[str, int],
                  vit: ViTPlan | None = None) -> str:
    from segvolpipe.planning.plans import load_plans, save_plans
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess

    folder = make_blob_dataset(roots["raw"], dataset_id, n=5, shape=(16, 32, 28), modality=modality)
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    result = run_plan_preprocess(str(dataset_id), PlanPreprocessOptions(workers=1, progress=False,
                                                                        configurations=("3d_lite",)))
    shrink_plans_for_training(result.folder / "plans.json")
    if vit is not None:
        plans = load_plans(result.folder / "plans.json")
        conf = replace(plans.configurations["3d_lite"], vit=vit)
        save_plans(result.folder / "plans.json", replace(plans, configurations={**plans.configurations,
                                                                                "3d_lite": conf}))
    return result.folder.name


def test_prior_and_the_lora_baseline_train_on_mri_from_a_ct_model(roots):
    from segvolpipe.inference.predictor import Predictor
    from segvolpipe.training.stage import TrainOptions, run_train

    ct = _preprocessed(roots, 21, "CT", {"background": 0, "liver": 1, "spleen": 2})
    mri = _preprocessed(roots, 31, "MRI", {"background": 0, "Liver": 1, "Kidneys": 2}, MRI_VIT)
    tiny = TrainOptions(epochs=1, iters_per_epoch=2, batch_size=1, workers=0, progress=False, device="cpu")
    ct_folder = run_train(ct, tiny).folder
    for variant, lora in (("prior", False), ("segvol", True)):
        options = replace(tiny, variant=variant, init=str(ct_folder), lora=lora)
        result = run_train(mri, options)
        fold = result.folder / "fold_0"
        config = json.loads((fold / "config.json").read_text())
        model = config["model"]
        assert config["sampling"]["input_size"] == list(TINY_VIT.input_size)  # the CT model's, not the MRI plans'
        assert model["vocabulary"] == ["liver", "spleen", "kidneys"] and model["labels"] == ["Liver", "Kidneys"]
        assert model["modality"] == MRI and model["vit"]["input_size"] == list(TINY_VIT.input_size)
        assert (model["lora"] is not None) == lora
        assert run_train(mri, replace(options, resume=True, epochs=2)).folds[0].status == "resumed"
        base = load_checkpoint(ct_folder / "fold_0" / "checkpoint_final.pt")["model"]
        tuned = load_checkpoint(fold / "checkpoint_final.pt")["model"]
        assert all(torch.equal(tuned[k], v) for k, v in base.items() if k != "text_encoder.embeddings.weight")
        predictor = Predictor(result.folder, mode="sliding", device="cpu")
        assert predictor.labels == {1: "Liver", 2: "Kidneys"}
        image = torch.randn(1, 16, 32, 28).numpy()
        out = predictor.predict(image, Geometry.from_canonical_spec((16, 32, 28), (3.0, 0.8, 0.8)),
                                predictor.targets())
        assert out.label.shape == (16, 32, 28)
        # its own folder (the LoRA baseline never shares the fine-tuned segvol's), and the CT dataset it came from
        assert result.folder.name == ("segvol-lora__3d_lite" if lora else "prior__3d_lite")
        assert sorted(p.name for p in (result.folder / "datasets").iterdir()) == [ct, mri]
        as_ct = Predictor(result.folder, mode="sliding", device="cpu", dataset=ct)
        assert as_ct.labels == {1: "liver", 2: "spleen"} and as_ct.modality == 0
        if variant == "prior":  # CT images through the identity expert: the CT model's prediction exactly
            ct_model = Predictor(ct_folder, mode="sliding", device="cpu")
            geometry = Geometry.from_canonical_spec((16, 32, 28), (3.0, 0.8, 0.8))
            mine = as_ct.predict(image, geometry, as_ct.targets(), probabilities=True).probabilities
            theirs = ct_model.predict(image, geometry, ct_model.targets(), probabilities=True).probabilities
            assert np.array_equal(mine, theirs)
    with pytest.raises(UserError, match="--lora adapts a trained model"):
        run_train(mri, replace(tiny, lora=True))
    with pytest.raises(UserError, match="--lora is the plain-LoRA segvol baseline"):
        run_train(mri, replace(tiny, variant="prior", init=str(ct_folder), lora=True))


def test_a_transfer_with_the_same_label_names_still_lists_the_ct_dataset(roots):
    from segvolpipe.training.stage import TrainOptions, run_train

    ct = _preprocessed(roots, 23, "CT", {"background": 0, "liver": 1, "spleen": 2})
    mri = _preprocessed(roots, 33, "MRI", {"background": 0, "liver": 1, "spleen": 2})
    tiny = TrainOptions(epochs=1, iters_per_epoch=1, batch_size=1, workers=0, progress=False, device="cpu")
    ct_folder = run_train(ct, tiny).folder
    result = run_train(mri, replace(tiny, variant="prior", init=str(ct_folder)))
    assert json.loads((result.folder / "fold_0" / "config.json").read_text())["model"]["vocabulary"] == ["liver",
                                                                                                           "spleen"]
    assert sorted(p.name for p in (result.folder / "datasets").iterdir()) == [ct, mri]
    # a run that starts from its own dataset's model is no transfer: no datasets/ folder
    own = run_train(ct, replace(tiny, variant="so3"))
    assert not (own.folder / "datasets").exists()


def test_the_image_paths_class_head_starts_afresh_when_the_label_counts_differ(tmp_path):
    torch.manual_seed(0)
    ct = replace(tiny_spec(), decoder=replace(TINY_DECODER, image_detail_channels=4))  # 3 labels: 4 outputs
    path = tmp_path / "checkpoint_final.pt"
    save_checkpoint(path, build_model(ct), None, TrainState(), {"dataset": "Dataset021_CT"}, ct.to_json())
    spec = transfer_spec(ct, _mri_spec(), "segvol")  # liver and kidneys: 3 outputs
    torch.manual_seed(1)
    fresh = build_model(spec).state_dict()
    torch.manual_seed(1)
    model = build_model(spec)
    load_transferred(model, path)
    saved, own = load_checkpoint(path)["model"], model.state_dict()
    assert own["image_detail.classes.weight"].shape[0] == 3 and saved["image_detail.classes.weight"].shape[0] == 4
    assert torch.equal(own["image_detail.classes.weight"], fresh["image_detail.classes.weight"])
    assert torch.equal(own["image_detail.stem.0.weight"], saved["image_detail.stem.0.weight"])
