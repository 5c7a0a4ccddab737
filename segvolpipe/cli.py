"""The ``segvol`` command line: one thin typer command per stage; heavy imports inside the commands.

User errors print ``error: <file>: <problem>`` and exit with code 2 (``--verbose`` adds the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from segvolpipe.cli_errors import STATE as _STATE
from segvolpipe.cli_errors import Commands, handles_errors
from segvolpipe.cli_errors import fail as _fail
from segvolpipe.cli_options import (
    Augmentation,
    Checkpoint,
    Coords,
    Denoise,
    Device,
    Modality,
    Mode,
    MRIContrast,
    PromptKind,
    Rule,
    Variant,
    parse_duration,
    parse_size,
)

app = typer.Typer(
    cls=Commands,
    name="segvol",
    help="Self-configuring 3D CT/MRI segmentation: nnU-Net's pipeline with SegVol's promptable models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug messages.")] = False,
) -> None:
    _STATE["verbose"] = verbose
    from segvolpipe.log import setup_logging

    setup_logging(verbose)


@app.command("make-phantoms")
@handles_errors
def make_phantoms(
    dataset: Annotated[int, typer.Option("-d", "--dataset", help="Dataset id (three digits at most).")] = 900,
    cases: Annotated[int, typer.Option("--cases", min=1, help="Training cases (imagesTr/labelsTr).")] = 16,
    test_cases: Annotated[int, typer.Option("--test-cases", min=0, help="Test cases (imagesTs/labelsTs).")] = 4,
    modality: Annotated[Modality, typer.Option("--modality", help="CT in Hounsfield units or MRI.")] = Modality.ct,
    contrast: Annotated[MRIContrast, typer.Option("--contrast", help="MRI contrast (T1- or T2-like).")] = MRIContrast.t1,
    size: Annotated[str, typer.Option("--size", help="Canonical volume size Z,Y,X in voxels.")] = "64,128,128",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed → identical files).")] = 0,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name (default PhantomCT / PhantomMRI).")] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="Comma-separated organs to label (default all).")] = None,
    random_orientation: Annotated[bool, typer.Option("--random-orientation/--ras", help="Store files in varied orientations, or all RAS.")] = True,
    np_: Annotated[int | None, typer.Option("--np", help="Worker processes (default: CPU count).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Regenerate even if the dataset exists.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Write a synthetic abdominal CT or MRI dataset in the raw format (for the demo, tests, benchmarks)."""
    from segvolpipe.log import console
    from segvolpipe.parallel import default_workers
    from segvolpipe.phantoms import PhantomOptions, make_phantom_dataset

    options = PhantomOptions(
        n_train=cases, n_test=test_cases, modality=modality.value, mri_contrast=contrast.value,
        size=parse_size(size), seed=seed, name=name,
        labels=tuple(s.strip() for s in labels.split(",") if s.strip()) if labels else None,
        random_orientation=random_orientation,
    )
    result = make_phantom_dataset(dataset, options, overwrite=overwrite, workers=np_ or default_workers(), progress=progress)
    verb = "exists (unchanged)" if result.skipped else f"written in {result.seconds:.1f} s"
    console.print(f"{result.folder}: {len(result.train_cases)} training + {len(result.test_cases)} test cases {verb}")


@app.command("plan-preprocess")
@handles_errors
def plan_preprocess(
    dataset: Annotated[str | None, typer.Option("-d", "--dataset", help="Dataset id or name (17, 017, Dataset017_BTCV).")] = None,
    configuration: Annotated[list[str] | None, typer.Option("-c", "--configuration", help="Configuration(s) to preprocess (default: all planned).")] = None,
    np_: Annotated[int | None, typer.Option("--np", help="Worker processes (default: CPU count).")] = None,
    norm: Annotated[str | None, typer.Option("--norm", help="Normalisation: a scheme for all channels (ct, segvol, zscore, rescale01, none) or 0:ct,1:zscore.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo every step even when its inputs are unchanged.")] = False,
    gpu_memory_gb: Annotated[float | None, typer.Option("--gpu-memory-gb", help="Plan for a CUDA GPU with this memory (0: plan for the CPU). Default: detect.")] = None,
    fingerprint_only: Annotated[bool, typer.Option("--fingerprint-only", help="Stop after the integrity check and fingerprint.")] = False,
    plan_only: Annotated[bool, typer.Option("--plan-only", help="Stop after fingerprint, plans and splits.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Check the raw dataset, fingerprint it, plan the configurations and preprocess every case."""
    from segvolpipe.parallel import default_workers
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess
    from segvolpipe.reporting import print_plan_preprocess

    opts = PlanPreprocessOptions(
        configurations=tuple(configuration) if configuration else None, workers=np_ or default_workers(),
        norm=norm, overwrite=overwrite, gpu_memory_gb=gpu_memory_gb, fingerprint_only=fingerprint_only,
        plan_only=plan_only, progress=progress,
    )
    result = run_plan_preprocess(dataset, opts)
    print_plan_preprocess(result)
    if result.failed:
        _fail([f"{cid}: {err}" for cid, err in result.failed] + [f"{len(result.failed)} case(s) failed; the others are done"])


@app.command("pseudomask")
@handles_errors
def pseudomask(
    dataset: Annotated[str | None, typer.Option("-d", "--dataset", help="Dataset (default: every preprocessed dataset lacking pseudo-masks).")] = None,
    configuration: Annotated[str | None, typer.Option("-c", "--configuration", help="Configuration (default: the plans' default).")] = None,
    rule: Annotated[Rule, typer.Option("--rule", help="percentile: SegVol's shipped rule (merge edges below a percentile of the weights); fh: Felzenszwalb–Huttenlocher's adaptive criterion.")] = Rule.percentile,
    scale: Annotated[float, typer.Option("--scale", help="--rule fh: scale constant k, in units of the image's estimated noise (larger → larger regions).")] = 1.5,
    denoise: Annotated[Denoise, typer.Option("--denoise", help="tv: total-variation denoising (edge-preserving); gaussian: SegVol's blur of --sigma.")] = Denoise.tv,
    tv_weight: Annotated[float, typer.Option("--tv-weight", help="TV denoising weight, in units of the image's estimated noise.")] = 1.0,
    sigma: Annotated[float, typer.Option("--sigma", help="With --denoise gaussian: σ in voxels of the finest axis (scaled by spacing per axis).")] = 0.8,
    min_size: Annotated[int | None, typer.Option("--min-size", help="Graph components smaller than this (voxels) merge into their cheapest neighbour (default: SegVol's 1000 per 256×256×32 voxels, scaled to the volume).")] = None,
    min_fraction: Annotated[float, typer.Option("--min-fraction", help="Regions and pieces below this fraction of the body's bounding box are dropped (SegVol's code: 0.001 = 0.1 % of its foreground-cropped sample).")] = 0.001,
    percentile: Annotated[float, typer.Option("--percentile", help="Rule percentile: merge edges below this percentile of non-zero weights.")] = 25.0,
    diagonals: Annotated[bool, typer.Option("--diagonals/--no-diagonals", help="Also SegVol's in-plane diagonal edges.")] = False,
    morphology: Annotated[bool, typer.Option("--morphology/--no-morphology", help="Per-region opening and closing.")] = True,
    working_grid: Annotated[str | None, typer.Option("--working-grid", help="Segment on this Z,Y,X grid and map back (SegVol: 32,256,256).")] = None,
    np_: Annotated[int | None, typer.Option("--np", help="Worker processes (default: CPU count).")] = None,
    qc: Annotated[bool, typer.Option("--qc/--no-qc", help="Write qc/{case}.png.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo cases even when their inputs are unchanged.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Make 3D Felzenszwalb–Huttenlocher pseudo-masks for preprocessed cases, cleaned and merged with the labels."""
    from segvolpipe.log import console
    from segvolpipe.parallel import default_workers
    from segvolpipe.pseudomask.case import PseudomaskSettings
    from segvolpipe.pseudomask.stage import PseudomaskOptions, run_pseudomask
    from segvolpipe.reporting import print_pseudomask

    settings = PseudomaskSettings(
        rule=rule.value, k=scale, sigma=sigma, denoise=denoise.value, tv_weight=tv_weight, min_size=min_size, min_fraction=min_fraction, percentile=percentile,
        diagonals=diagonals, morphology=morphology, working_grid=parse_size(working_grid) if working_grid else None,
    )
    results = run_pseudomask(dataset, PseudomaskOptions(configuration, settings, np_ or default_workers(), overwrite, qc, progress))
    if not results:
        console.print("every preprocessed dataset already has pseudo-masks for its default configuration")
    failed = [f"{r.dataset}: {cid}: {err}" for r in results for cid, err in r.failed]
    for r in results:
        print_pseudomask(r)
    if failed:
        _fail(failed + [f"{len(failed)} case(s) failed; the others are done"])


@app.command("models")
@handles_errors
def models(
    dataset: Annotated[str | None, typer.Option("-d", "--dataset", help="Dataset whose plans size the models (default: SegVol's reference model).")] = None,
    configuration: Annotated[str | None, typer.Option("-c", "--configuration", help="Configuration (default: the plans' default).")] = None,
    variant: Annotated[list[str] | None, typer.Option("--variant", help="Only these variants (repeatable): segvol, so3, prior, unet.")] = None,
    pretrained: Annotated[Path | None, typer.Option("--pretrained", help="Check that this SegVol (or segvolpipe) checkpoint loads: one table of loaded / skipped / missing tensors.")] = None,
    clip_tokenizer: Annotated[Path | None, typer.Option("--clip-tokenizer", help="CLIP tokenizer directory (SegVol's config/clip): initialise label embeddings from the checkpoint's CLIP tower.")] = None,
) -> None:
    """List the model variants with total and trainable parameter counts for a configuration."""
    from segvolpipe.models.summary import describe_models
    from segvolpipe.reporting import print_models

    print_models(describe_models(dataset, configuration, variant, pretrained, clip_tokenizer))


@app.command("train")
@handles_errors
def train(
    dataset: Annotated[list[str] | None, typer.Option("-d", "--dataset", help="Dataset (default: the only preprocessed one); repeat it (-d 17 -d 18) to train one universal model on several.")] = None,
    variant: Annotated[Variant, typer.Option("--variant", help="Model variant.")] = Variant.segvol,
    name: Annotated[str | None, typer.Option("--name", help="Universal model's name: results/Universal_{name} (default: the dataset ids joined).")] = None,
    weight: Annotated[list[float] | None, typer.Option("--weight", help="Universal training: share of steps per dataset, in -d order (repeatable; default equal).")] = None,
    configuration: Annotated[str | None, typer.Option("-c", "--configuration", help="Configuration (default: the plans' default).")] = None,
    fold: Annotated[list[str] | None, typer.Option("--fold", "-f", help="Fold 0-4 or 'all' (repeatable; default 0).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs (default: the plans').")] = None,
    iters_per_epoch: Annotated[int | None, typer.Option("--iters-per-epoch", help="Optimiser steps per epoch.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per step and process.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine).")] = None,
    detail_lr: Annotated[float | None, typer.Option("--detail-lr", help="Peak learning rate of a promptable model's image path (3d_lite; default: the plans' unet_lr).")] = None,
    time_budget: Annotated[str | None, typer.Option("--time-budget", help="Stop after this long (600, 10m, 1.5h); the schedule is fitted to it.")] = None,
    device: Annotated[Device, typer.Option("--device", help="auto: CUDA when available.")] = Device.auto,
    init: Annotated[str | None, typer.Option("--init", help="Start from a results folder or checkpoint (so3/prior: default the trained segvol).")] = None,
    lora: Annotated[bool, typer.Option("--lora", help="segvol with --init: LoRA adapters (rank 8, rsLoRA, ViT qkv/MLP, decoder q/v) on a frozen base, the plain-LoRA baseline of the CT→MRI study.")] = False,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="Start from SegVol's released weights (3d_segvol).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from checkpoint_latest.pt exactly.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard an existing run of this fold.")] = False,
    augmentation: Annotated[Augmentation | None, typer.Option("--augmentation", help="full: nnU-Net's rotation, scaling, noise, brightness, contrast, gamma and mirroring; mirror: the mirroring alone; none (default: the plans', full).")] = None,
    rotation_aug: Annotated[bool | None, typer.Option("--rotation-aug/--no-rotation-aug", help="Rotations over the rotation test's range (±90° about the longitudinal axis; full augmentation).")] = None,
    pseudo_masks: Annotated[bool | None, typer.Option("--pseudo-masks/--no-pseudo-masks", help="Pseudo-mask regions as extra prompts (default: when they exist).")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="Processes with torch.distributed (one per GPU; gloo CPU processes with --device cpu).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of weights, data and prompts.")] = 0,
    np_: Annotated[int | None, typer.Option("--np", help="Data-loading workers per process (default: 2 on the CPU; on CUDA all CPUs but one, at most 12).")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 autocast where the device does it natively: CUDA, CPUs with AVX512-BF16/AMX (default: the plans', on).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Train a model variant on a preprocessed dataset (per fold, resumable, CPU, one GPU or many)."""
    from segvolpipe.reporting import print_train
    from segvolpipe.training.stage import TrainOptions, run_train
    from segvolpipe.training.universal_stage import run_train_universal

    options = TrainOptions(
        variant=variant.value, configuration=configuration, folds=tuple(fold or ["0"]), epochs=epochs,
        iters_per_epoch=iters_per_epoch, batch_size=batch_size, lr=lr, detail_lr=detail_lr,
        time_budget_s=parse_duration(time_budget),
        device=device.value, init=init, lora=lora, pretrained=pretrained, resume=resume, overwrite=overwrite,
        augmentation=None if augmentation is None else augmentation.value,
        rotation_aug=rotation_aug, pseudo_masks=pseudo_masks, gpus=gpus, seed=seed, workers=np_, progress=progress, bf16=bf16,
    )
    datasets = list(dataset or [])
    if len(datasets) > 1:
        print_train(run_train_universal(datasets, options, weight, name))
        return
    if weight or name:
        from segvolpipe.errors import UserError

        raise UserError("--weight and --name are for universal training over several datasets (-d A -d B)")
    print_train(run_train(datasets[0] if datasets else None, options))


@app.command("predict")
@handles_errors
def predict(
    input_: Annotated[Path, typer.Option("-i", "--input", help="Folder of images ({case}_0000.nii.gz, one file per channel) or one image file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder: {case}.nii.gz label maps and predictions.json.")],
    dataset: Annotated[str | None, typer.Option("-d", "--dataset", help="Dataset whose trained model to use (default: the only trained model); with a universal model (-m), the dataset the images come from (its preprocessing and classes).")] = None,
    model: Annotated[Path | None, typer.Option("-m", "--model", help="A results folder results/DatasetXXX/{variant}__{configuration}.")] = None,
    configuration: Annotated[str | None, typer.Option("-c", "--configuration", help="Configuration of the model (with -d).")] = None,
    variant: Annotated[Variant | None, typer.Option("--variant", help="Variant of the model (with -d).")] = None,
    fold: Annotated[list[str] | None, typer.Option("-f", "--fold", help="Folds to ensemble (repeatable; default: every trained fold 0-4, else 'all').")] = None,
    checkpoint: Annotated[Checkpoint, typer.Option("--checkpoint", help="Which checkpoint of each fold.")] = Checkpoint.final,
    mode: Annotated[Mode | None, typer.Option("--mode", help="zoom: zoom-out-zoom-in; sliding: whole-volume sliding window (default: the plans', zoom for promptable variants, sliding for unet).")] = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Only these classes, comma-separated (default: every class of the dataset).")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Segment one target named by text (e.g. 'left kidney').")] = None,
    box: Annotated[str | None, typer.Option("--box", help="Box prompt: two opposite corners a0,b0,c0,a1,b1,c1 (see --coords).")] = None,
    point: Annotated[list[str] | None, typer.Option("--point", help="Point prompt a,b,c or a,b,c,neg (repeatable; see --coords).")] = None,
    coords: Annotated[Coords, typer.Option("--coords", help="voxel: indices i,j,k of the input file's own axes; world: x,y,z in RAS millimetres (the NIfTI affine).")] = Coords.voxel,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Mirroring test-time augmentation: each window also mirrored along the axes the model's training mirrored (the plans' mirror_axes; left-right: 2 passes).")] = False,
    step: Annotated[float | None, typer.Option("--step", help="Distance between windows as a fraction of the window (default: the plans', 0.5).")] = None,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="Also write {case}_probabilities.npz (float16, the input's grid).")] = False,
    device: Annotated[Device, typer.Option("--device", help="auto: CUDA when available.")] = Device.auto,
    np_: Annotated[int, typer.Option("--np", help="Cases predicted in parallel processes (each loads the model).")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo cases already predicted with these settings.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Segment raw NIfTI images with a trained model; label maps keep each input's shape, affine and orientation."""
    from segvolpipe.inference.prompts import parse_box, parse_point
    from segvolpipe.inference.stage import PredictOptions, run_predict
    from segvolpipe.reporting import print_predict

    if classes and (text or box or point):
        from segvolpipe.errors import UserError

        raise UserError("--classes segments several classes; --text/--box/--point one target: give one or the other")
    options = PredictOptions(
        dataset=dataset, model=str(model) if model else None, configuration=configuration,
        variant=variant.value if variant else None, folds=tuple(fold) if fold else None, checkpoint=checkpoint.value,
        mode=mode.value if mode else None,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None, text=text,
        box=parse_box(box) if box else None, points=tuple(parse_point(p) for p in point or ()), coords=coords.value,
        tta=tta, step=step, save_probabilities=save_probabilities, device=device.value, workers=np_,
        overwrite=overwrite, progress=progress,
    )
    result = run_predict(input_, output, options)
    print_predict(result)
    if result.failed:
        _fail([f"{case}: {error}" for case, error in result.failed.items()]
              + [f"{len(result.failed)} case(s) failed; the others are written to {output}"])


@app.command("evaluate")
@handles_errors
def evaluate(
    dataset: Annotated[str | None, typer.Option("-d", "--dataset", help="Dataset whose trained model to evaluate (with --pred/--ref: whose dataset.json labels to use; with a universal model, -m: the dataset to score it on).")] = None,
    model: Annotated[Path | None, typer.Option("-m", "--model", help="A results folder results/DatasetXXX/{variant}__{configuration}.")] = None,
    configuration: Annotated[str | None, typer.Option("-c", "--configuration", help="Configuration of the model (with -d).")] = None,
    variant: Annotated[Variant | None, typer.Option("--variant", help="Variant of the model (with -d).")] = None,
    pred: Annotated[Path | None, typer.Option("--pred", help="Folder of predicted label maps {case}.nii.gz to score (with --ref).")] = None,
    ref: Annotated[Path | None, typer.Option("--ref", help="Folder of reference label maps {case}.nii.gz (with --pred).")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="dataset.json whose labels --pred/--ref are scored with (default: -d's, else the one beside --ref).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where --pred/--ref writes summary.json and per_case.csv (default: --pred).")] = None,
    rotate: Annotated[bool, typer.Option("--rotate/--no-rotate", help="Rotation robustness test on the scored cases.")] = True,
    angles: Annotated[str, typer.Option("--angles", help="Rotation: degrees about the longitudinal axis, radians about the other two.")] = "45,0.1,0.1",
    sweep: Annotated[str | None, typer.Option("--sweep", help="Also Dice against angle: degrees about the longitudinal axis, e.g. 0,15,30,45,60,90.")] = None,
    mode: Annotated[Mode | None, typer.Option("--mode", help="Inference mode (default: the plans', zoom for promptable variants, sliding for unet).")] = None,
    prompt: Annotated[PromptKind, typer.Option("--prompt", help="Rotation-test prompts: text (every class's name), box (the reference's box per class, rotated with it), points (three positive points per class from the reference) or box+text.")] = PromptKind.text,
    cases: Annotated[int | None, typer.Option("--cases", min=1, help="Rotation test on the first N scored cases only (default: all).")] = None,
    hd95: Annotated[bool, typer.Option("--hd95", help="Also the 95th-percentile Hausdorff distance (mm; slow).")] = False,
    nsd: Annotated[float | None, typer.Option("--nsd", help="Also the normalised surface Dice at this tolerance (mm; slow).")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Compare every evaluated variant of the dataset: one table, comparison.png and comparison.json.")] = False,
    np_: Annotated[int | None, typer.Option("--np", min=1, help="Processes for scoring (default: CPU count) and for predicting test cases (default 1; each loads the model).")] = None,
    device: Annotated[Device, typer.Option("--device", help="auto: CUDA when available.")] = Device.auto,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Predict the test cases and redo the rotation test even when done with these settings.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """Dice per case and class (test split or cross-validation, or any two folders), rotation robustness, plots."""
    from segvolpipe.errors import UserError

    if compare:
        from segvolpipe.evaluation.compare import run_compare
        from segvolpipe.reporting import print_compare

        if pred or ref or labels or output or sweep:
            raise UserError("--compare reads what 'segvol evaluate' wrote for each variant: drop --pred/--ref/"
                            "--labels/-o/--sweep")
        print_compare(run_compare(dataset, str(model) if model else None, configuration,
                                  variant.value if variant else None))
        return
    if not rotate and (sweep or cases):
        raise UserError("--sweep and --cases belong to the rotation test: drop --no-rotate")
    from segvolpipe.evaluation.rotation import parse_angles, parse_sweep
    from segvolpipe.evaluation.stage import EvaluateOptions, run_evaluate
    from segvolpipe.reporting import print_evaluate

    options = EvaluateOptions(
        dataset=dataset, model=str(model) if model else None, configuration=configuration,
        variant=variant.value if variant else None, pred=str(pred) if pred else None, ref=str(ref) if ref else None,
        labels=str(labels) if labels else None, output=str(output) if output else None, rotate=rotate,
        angles=parse_angles(angles), sweep=tuple(parse_sweep(sweep)) if sweep else (),
        mode=mode.value if mode else None, prompt=prompt.value, cases=cases, hd95=hd95, nsd_mm=nsd, device=device.value,
        workers=np_, overwrite=overwrite, progress=progress,
    )
    result = run_evaluate(options)
    print_evaluate(result)
    if result.failures:
        _fail([f"{f['case']}: {f['file'] + ': ' if f['file'] else ''}{f['error']}" for f in result.failures]
              + [f"{len(result.failures)} case(s) failed; the others are scored → {result.output}"])


@app.command("demo")
@handles_errors
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Smaller data and budgets, every stage still runs.")] = False,
    np_: Annotated[int | None, typer.Option("--np", help="Worker processes (default: CPU count).")] = None,
    segvol_time: Annotated[str | None, typer.Option("--segvol-time", help="Training time of segvol (default 6m, --quick 90s).")] = None,
    so3_time: Annotated[str | None, typer.Option("--so3-time", help="Training time of so3 from it (default 2.5m, --quick 30s).")] = None,
    device: Annotated[Device, typer.Option("--device", help="auto: CUDA when available.")] = Device.auto,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
) -> None:
    """The main job end to end on an embedded phantom CT dataset (Dataset900_PhantomCT): phantoms, plan-preprocess,
    pseudo-masks, train segvol then so3 from it, predict the held-out test cases (zoom-out-zoom-in) and evaluate
    them with the rotation test; one table of upright and rotated Dice per class and variant."""
    from segvolpipe.demo import DemoOptions, run_demo
    from segvolpipe.parallel import default_workers

    train_s = {v: parse_duration(t, f"--{v}-time") for v, t in (("segvol", segvol_time), ("so3", so3_time))
               if t is not None}
    result = run_demo(DemoOptions(quick=quick, workers=np_ or default_workers(), device=device.value,
                                  progress=progress, train_s=train_s))
    if result.failures:
        _fail([*result.failures, f"{len(result.failures)} failure(s); everything else ran"])


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
