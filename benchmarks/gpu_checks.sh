#!/usr/bin/env bash
# Issue 5's GPU checks in one go, on a machine with one CUDA GPU: plans made for that GPU, the model zoo's
# step time, throughput and peak memory in bf16 (and the largest training batch of 3d_segvol that fits),
# then `segvol train` end to end on CUDA in bf16.
#
#   benchmarks/gpu_checks.sh OUT_DIR [diag|zoo|zoo-lite|zoo-segvol|train-segvol|train-lite|train-lite-noaug|train-unet ...] [--budget 3m] [--np 14]
#
# Steps (default: zoo train-segvol):
#   diag          benchmarks/diag_train_step.py: where a training step's time goes (3d_segvol with the profiler's
#                 table; 3d_lite segvol and unet)
#   zoo           benchmarks/bench_models.py --device cuda, 3d_lite and 3d_segvol (the latter with --max-batch);
#                 zoo-lite, zoo-segvol: one of them
#   train-segvol  segvol train -c 3d_segvol (the plans' default on a GPU of >= 20 GB), --time-budget BUDGET
#   train-lite    segvol train -c 3d_lite, --time-budget BUDGET
#   train-lite-noaug  the same with --augmentation none (--overwrite: after train-lite, whose files are saved by then)
#   train-unet    segvol train -c 3d_lite --variant unet, --time-budget BUDGET
#
# Needs the raw Dataset900_PhantomCT (`segvol make-phantoms -d 900`, as `make demo` makes it) under
# SEGVOL_RAW (default raw_data). Preprocessed data and results go to $GPU_CHECKS_WORK (default: a new temporary
# folder); logs, the benchmarks' JSON and each run's config, training log, progress plot and validation summary
# (a .tgz) to OUT_DIR.
# `segvol` is run as `python3 -m segvolpipe.cli` from the repository root, so an installed package is not
# needed, only its dependencies.
set -euo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR [steps...] [--budget 3m] [--np 14]}
shift
steps=() budget=3m np=14
while (($#)); do
    case $1 in
        --budget) budget=$2; shift 2 ;;
        --np) np=$2; shift 2 ;;
        *) steps+=("$1"); shift ;;
    esac
done
((${#steps[@]})) || steps=(zoo train-segvol)
for step in "${steps[@]}"; do  # before minutes of preparation
    [[ $step =~ ^(diag|zoo|zoo-lite|zoo-segvol|train-segvol|train-lite|train-lite-noaug|train-unet)$ ]] || { echo "unknown step $step" >&2; exit 2; }
done
mkdir -p "$out"
work=${GPU_CHECKS_WORK:-$(mktemp -d)}
export SEGVOL_PREPROCESSED=$work/preprocessed SEGVOL_RESULTS=$work/results PYTHONUNBUFFERED=1
segvol() { python3 -m segvolpipe.cli "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, monai, numpy; print('torch', torch.__version__, 'monai', monai.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee -a "$out/gpu.txt"

t=$SECONDS
segvol plan-preprocess -d 900 --np "$np" --no-progress 2>&1 | tail -14 | tee "$out/plan.log"
segvol pseudomask -d 900 --np "$np" --no-progress 2>&1 | tail -3 | tee "$out/pseudomask.log"
echo "data ready in $((SECONDS - t)) s"

train() {  # name, variant, configuration, then more of segvol train's options
    local name=$1 variant=$2 configuration=$3
    shift 3
    t=$SECONDS
    segvol train -d 900 --variant "$variant" -c "$configuration" --time-budget "$budget" --np "$np" --no-progress \
        "$@" 2>&1 | tee "$out/$name.log" | tail -25
    echo "$name: $((SECONDS - t)) s in all"
    local fold=$SEGVOL_RESULTS/Dataset900_PhantomCT/${variant}__$configuration/fold_0
    (cd "$fold" && tar -czf "$out/$name.tgz" config.json training_log.jsonl progress.png \
        $(ls validation/summary.json 2>/dev/null))
}

for step in "${steps[@]}"; do
    case $step in
        diag)
            python3 benchmarks/diag_train_step.py -d 900 -c 3d_segvol --np "$np" --profile 2>&1 | tee "$out/diag_segvol.log"
            for v in segvol unet; do
                python3 benchmarks/diag_train_step.py -d 900 -c 3d_lite --variant $v --np "$np" 2>&1 | tee "$out/diag_lite_$v.log"
            done ;;
        zoo|zoo-lite|zoo-segvol)
            [[ $step == zoo-segvol ]] || python3 benchmarks/bench_models.py -d 900 --device cuda \
                --configurations 3d_lite --repeats 10 --batch 2 --json "$out/zoo_lite.json"
            [[ $step == zoo-lite ]] || python3 benchmarks/bench_models.py -d 900 --device cuda \
                --configurations 3d_segvol --repeats 3 --batch 2 --max-batch --json "$out/zoo_segvol.json" ;;
        train-segvol) train train_segvol segvol 3d_segvol ;;
        train-lite) train train_lite segvol 3d_lite ;;
        train-lite-noaug) train train_lite_noaug segvol 3d_lite --augmentation none --overwrite ;;
        train-unet) train train_unet unet 3d_lite ;;
    esac
done
