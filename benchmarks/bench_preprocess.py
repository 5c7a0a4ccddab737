#!/usr/bin/env python3
"""Preprocessing benchmark: ``segvol plan-preprocess`` against nnU-Net v2 and an I/O floor.

Side by side, in one run, on the same phantom datasets and with the same number of worker processes,
it measures wall time and peak memory of the whole process tree (see ``_common.py``) of

* ``segvol plan-preprocess -d ID -c 3d_lite --np 2`` (total) and ``... --fingerprint-only``;
* ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np 2 -npfp 2`` and the plain ``-np 2`` form
  (nnU-Net's default ``-npfp`` is 8), plus ``nnUNetv2_extract_fingerprint -d ID -np 2`` for the
  fingerprint memory figure; nnU-Net runs from its own virtual environment (``--setup-nnunet``);
* the I/O floor: 2 processes that only read every raw image and label with nibabel and write each as
  ``.npy`` (nothing else: no torch import, no statistics, no resampling).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_preprocess.py --setup-nnunet      # once; minutes
    .venv/bin/python benchmarks/bench_preprocess.py                     # full: 6 + 20 cases, 3 repeats
    .venv/bin/python benchmarks/bench_preprocess.py --quick             # 6 cases, 1 repeat

Everything it writes lies under ``benchmarks/_work/`` (git-ignored); results go to
``benchmarks/_work/bench_preprocess.json`` (``--out``) and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
NNUNET_VENV = WORK / "nnunet-venv"
MAIN_PYTHON = REPO / ".venv" / "bin" / "python"
SEGVOL = REPO / ".venv" / "bin" / "segvol"

# (dataset id, number of training cases, (z, y, x))
FULL_DATASETS = [(901, 6, (64, 96, 96)), (902, 20, (96, 128, 128))]
QUICK_DATASETS = FULL_DATASETS[:1]

# ----------------------------------------------------------------------------------------------------------
# nnU-Net's own virtual environment
#
# A plain `pip install -c <torch==2.13.0> nnunetv2` pulls torchvision (and timm, huggingface_hub,
# safetensors): nnunetv2 2.8.1 -> dynamic-network-architectures>=0.4.4 -> timm<1.0.23 -> torchvision.
# timm is only imported by dynamic-network-architectures' Primus/EVA networks, which planning,
# preprocessing and the default U-Nets never touch. So nnunetv2 and dynamic-network-architectures are
# installed with --no-deps and their declared dependencies are installed explicitly, minus timm.

TORCH_PIN = "2.13.0"
NNUNET_PIN = "2.8.1"  # the version docs/ANCHORS.md was read from
DNA_PIN = "0.4.4"
# nnunetv2 2.8.1's Requires-Dist without dynamic-network-architectures and torch (installed first), plus
# dynamic-network-architectures' own (torch, numpy, einops) without timm.
NNUNET_DEPS = [
    "acvl-utils>=0.2.6,<0.3",
    "tqdm",
    "scipy",
    "batchgenerators>=0.25.1",
    "numpy>=1.24",
    "scikit-learn",
    "scikit-image>=0.19.3",
    "SimpleITK>=2.2.1",
    "pandas",
    "graphviz",
    "tifffile",
    "requests",
    "nibabel",
    "matplotlib",
    "seaborn",
    "imagecodecs",
    "yacs",
    "batchgeneratorsv2>=0.3.2",
    "einops",
    "blosc2>=3.3.2",
]
FORBIDDEN_IN_NNUNET_VENV = ("torchvision", "timm", "triton")  # and any nvidia-* package


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip_list(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p["name"].lower(): p["version"] for p in json.loads(out)}


def check_nnunet_venv(venv: Path = NNUNET_VENV) -> list[str]:
    """Problems with the nnU-Net venv (empty list: usable)."""
    python = _venv_python(venv)
    if not python.exists():
        return [f"no virtual environment at {venv}"]
    try:
        pkgs = _pip_list(python)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError) as e:
        return [f"pip list failed in {venv}: {e}"]
    problems = []
    torch_v = pkgs.get("torch")
    if torch_v is None or not torch_v.startswith(TORCH_PIN):
        problems.append(f"torch is {torch_v}, expected {TORCH_PIN} (CPU build)")
    elif "+cpu" not in torch_v:
        problems.append(f"torch is {torch_v}, not the +cpu build")
    if pkgs.get("nnunetv2") != NNUNET_PIN:
        problems.append(f"nnunetv2 is {pkgs.get('nnunetv2')}, expected {NNUNET_PIN}")
    bad = [n for n in pkgs if n in FORBIDDEN_IN_NNUNET_VENV or n.startswith("nvidia-")]
    if bad:
        problems.append(
            f"unwanted packages installed: {', '.join(sorted(bad))} (delete {venv} and set up again)"
        )
    if not (venv / "bin" / "nnUNetv2_plan_and_preprocess").exists():
        problems.append("nnUNetv2_plan_and_preprocess entry point missing")
    return problems


def ensure_nnunet_venv(venv: Path = NNUNET_VENV, log=print) -> Path:
    """Create (or complete) nnU-Net v2's own venv with the CPU torch; idempotent. Returns its python.

    Steps (each a no-op when already satisfied):
      1. ``python3 -m venv VENV``
      2. ``pip install -c C torch==2.13.0``   (C = a constraints file holding ``torch==2.13.0``; the CPU
         wheel of exactly that pin lies on the machines, any other torch would pull CUDA)
      3. ``pip install -c C --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4``
      4. ``pip install -c C <NNUNET_DEPS>``   (their dependencies minus timm, hence no torchvision)
      5. checks: torch is 2.13.0+cpu, no torchvision/timm/triton/nvidia-*, ``import nnunetv2`` and the
         planner/preprocessor modules import; ``pip freeze`` goes to ``_work/nnunet-venv-freeze.txt``.
    """
    python = _venv_python(venv)
    if not check_nnunet_venv(venv):
        log(f"nnU-Net venv ready: {venv}")
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    constraints = venv.parent / "nnunet-constraints.txt"
    constraints.write_text(f"torch=={TORCH_PIN}\n")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints)]
    steps: list[list[str]] = []
    if not python.exists():
        steps.append([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)])
    steps += [
        pip + [f"torch=={TORCH_PIN}"],
        pip + ["--no-deps", f"nnunetv2=={NNUNET_PIN}", f"dynamic-network-architectures=={DNA_PIN}"],
        pip + NNUNET_DEPS,
    ]
    for cmd in steps:
        log("$ " + shlex.join(cmd))
        subprocess.run(cmd, check=True)
    problems = check_nnunet_venv(venv)
    if problems:
        raise SystemExit("nnU-Net venv set-up failed:\n  " + "\n  ".join(problems))
    probe = (
        "import nnunetv2, torch;"
        "import nnunetv2.experiment_planning.plan_and_preprocess_entrypoints;"
        "import nnunetv2.experiment_planning.experiment_planners.default_experiment_planner;"
        "import nnunetv2.preprocessing.preprocessors.default_preprocessor;"
        "import dynamic_network_architectures.architectures.unet;"
        "print('nnunetv2 imports fine; torch', torch.__version__, 'cuda', torch.version.cuda)"
    )
    subprocess.run([str(python), "-c", probe], check=True)
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    (venv.parent / "nnunet-venv-freeze.txt").write_text(freeze.stdout)
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    log("pip check (timm is left out on purpose):\n" + (check.stdout + check.stderr).strip())
    log(f"nnU-Net venv ready: {venv}")
    return python


# ----------------------------------------------------------------------------------------------------------
# Datasets


def dataset_folder(raw_root: Path, dataset_id: int) -> Path:
    found = sorted(raw_root.glob(f"Dataset{dataset_id:03d}_*"))
    if len(found) != 1:
        raise SystemExit(f"expected one Dataset{dataset_id:03d}_* folder under {raw_root}, found {found}")
    return found[0]


def make_phantoms_segvol(
    raw_root: Path, dataset_id: int, cases: int, size: tuple[int, int, int], logs: Path, ras: bool = False
) -> list[str]:
    cmd = [
        str(SEGVOL),
        "make-phantoms",
        "-d",
        str(dataset_id),
        "--cases",
        str(cases),
        "--test-cases",
        "0",
        "--size",
        ",".join(map(str, size)),
        "--seed",
        "0",
        "--no-progress",
        *(["--ras"] if ras else []),
    ]
    env = dict(os.environ, SEGVOL_RAW=str(raw_root))
    res = C.run_measured(cmd, env, logs / f"make-phantoms_{dataset_id}.log", cwd=REPO)
    if not res.ok:
        raise SystemExit(f"segvol make-phantoms failed (rc {res.returncode}):\n{res.log_tail}")
    return cmd


def make_phantoms_builtin(raw_root: Path, dataset_id: int, cases: int, size: tuple[int, int, int]):
    """A stand-in nnU-Net-format CT dataset (int16 body + one blob label), for testing the harness."""
    import nibabel as nib
    import numpy as np

    folder = raw_root / f"Dataset{dataset_id:03d}_BenchPhantom"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    z, y, x = size
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    spacing_xyz = (0.8, 0.8, 2.5)
    for i in range(cases):
        img = np.full(size, -1000, np.float32)
        body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 < 1
        img[body] = 0
        c = [s / 2 + rng.uniform(-0.1, 0.1) * s for s in size]
        r = [s * rng.uniform(0.12, 0.2) for s in size]
        blob = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
        img[blob] = 60
        img += rng.normal(0, 20, size)
        affine = np.diag([*spacing_xyz, 1.0])
        # numpy (z, y, x) -> NIfTI (x, y, z)
        nib.save(
            nib.Nifti1Image(img.astype(np.int16).transpose(2, 1, 0), affine),
            folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(blob.astype(np.uint8).transpose(2, 1, 0), affine),
            folder / "labelsTr" / f"case_{i:03d}.nii.gz",
        )
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "organ": 1},
                "numTraining": cases,
                "file_ending": ".nii.gz",
                "name": "BenchPhantom",
            },
            indent=2,
        )
    )
    return ["(builtin nibabel phantom generator of bench_preprocess.py)"]


# ----------------------------------------------------------------------------------------------------------
# The I/O floor


def _io_floor_one(job: tuple[str, str]) -> int:
    import nibabel as nib
    import numpy as np

    src, dst = job
    arr = np.asanyarray(nib.load(src).dataobj)
    np.save(dst, arr)
    return arr.nbytes


def io_floor_worker(raw_dataset: Path, out_dir: Path, processes: int) -> None:
    """Read every raw image and label with nibabel and write it as .npy, with ``processes`` workers."""
    import multiprocessing

    ending = json.loads((raw_dataset / "dataset.json").read_text()).get("file_ending", ".nii.gz")
    jobs = []
    for sub in ("imagesTr", "labelsTr"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        for f in sorted((raw_dataset / sub).glob(f"*{ending}")):
            jobs.append((str(f), str(out_dir / sub / (f.name[: -len(ending)] + ".npy"))))
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        nbytes = sum(pool.imap_unordered(_io_floor_one, jobs, chunksize=1))
    print(f"io-floor: {len(jobs)} files, {nbytes / C.MIB:.1f} MiB of arrays written to {out_dir}")


# ----------------------------------------------------------------------------------------------------------
# The steps


def _out_stats(folder: Path) -> dict:
    n = size = 0
    if folder.exists():
        for p in folder.rglob("*"):
            if p.is_file():
                n += 1
                size += p.stat().st_size
    return {"files": n, "mib": round(size / C.MIB, 2)}


def build_steps(
    dataset_id: int, raw_dataset: Path, np_: int, dirs: dict[str, Path], with_segvol: bool, with_nnunet: bool
) -> list[dict]:
    """Each step: key, label, cmd, env additions, the output root to clean before each run."""
    d = str(dataset_id)
    nn_bin = NNUNET_VENV / "bin"
    steps = []
    if with_segvol:
        for key, extra, label in (
            ("segvol_total", [], "segvol plan-preprocess (total)"),
            ("segvol_fingerprint", ["--fingerprint-only"], "segvol plan-preprocess --fingerprint-only"),
        ):
            out = dirs["out"] / key
            steps.append(
                {
                    "key": key,
                    "label": label,
                    "out": out,
                    "cmd": [
                        str(SEGVOL),
                        "plan-preprocess",
                        "-d",
                        d,
                        "-c",
                        "3d_lite",
                        "--np",
                        str(np_),
                        "--no-progress",
                        "--overwrite",
                        *extra,
                    ],
                    "env": {
                        "SEGVOL_RAW": str(dirs["raw"]),
                        "SEGVOL_PREPROCESSED": str(out / "preprocessed"),
                        "SEGVOL_RESULTS": str(out / "results"),
                    },
                }
            )
    if with_nnunet:
        for key, cmd, label in (
            (
                "nnunet_npfp2",
                [
                    "nnUNetv2_plan_and_preprocess",
                    "-d",
                    d,
                    "-c",
                    "3d_fullres",
                    "-np",
                    str(np_),
                    "-npfp",
                    str(np_),
                ],
                f"nnU-Net plan_and_preprocess -np {np_} -npfp {np_}",
            ),
            (
                "nnunet_default",
                ["nnUNetv2_plan_and_preprocess", "-d", d, "-c", "3d_fullres", "-np", str(np_)],
                f"nnU-Net plan_and_preprocess -np {np_} (default -npfp 8)",
            ),
            (
                "nnunet_fingerprint",
                ["nnUNetv2_extract_fingerprint", "-d", d, "-np", str(np_)],
                f"nnU-Net extract_fingerprint -np {np_}",
            ),
        ):
            out = dirs["out"] / key
            steps.append(
                {
                    "key": key,
                    "label": label,
                    "out": out,
                    "cmd": [str(nn_bin / cmd[0]), *cmd[1:]],
                    "env": {
                        "nnUNet_raw": str(dirs["raw"]),
                        "nnUNet_preprocessed": str(out / "preprocessed"),
                        "nnUNet_results": str(out / "results"),
                        "PATH": f"{nn_bin}:{os.environ.get('PATH', '')}",
                    },
                }
            )
    out = dirs["out"] / "io_floor"
    steps.append(
        {
            "key": "io_floor",
            "label": f"I/O floor (nibabel read + .npy write, {np_} processes)",
            "out": out,
            "cmd": [
                str(MAIN_PYTHON if MAIN_PYTHON.exists() else Path(sys.executable)),
                str(Path(__file__).resolve()),
                "--io-floor-worker",
                str(raw_dataset),
                str(out / "npy"),
                "--np",
                str(np_),
            ],
            "env": {},
        }
    )
    for s in steps:  # the output roots must exist empty (nnU-Net checks its env folders)
        s["display"] = (
            " ".join(f"{k}={_short(v)}" for k, v in s["env"].items() if k != "PATH")
            + (" " if s["env"] else "")
            + shlex.join([_short(c) for c in s["cmd"]])
        )
    return steps


def _short(p: str) -> str:
    """Paths relative to the repository for display."""
    for prefix, repl in (
        (str(NNUNET_VENV / "bin") + "/", ""),
        (str(REPO / ".venv" / "bin") + "/", ""),
        (str(REPO) + "/", ""),
    ):
        if p.startswith(prefix):
            return repl + p[len(prefix) :]
    return p


def run_step(step: dict, logs: Path, repeat: int, timeout_s: float) -> C.RunResult:
    out: Path = step["out"]
    if out.exists():
        shutil.rmtree(out)
    for k, v in step["env"].items():
        if k != "PATH":
            Path(v).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **step["env"])
    res = C.run_measured(
        step["cmd"], env, logs / f"{step['key']}_r{repeat}.log", cwd=REPO, timeout_s=timeout_s
    )
    res.outputs = _out_stats(out)
    return res


# ----------------------------------------------------------------------------------------------------------
# Report


ROW_ORDER = [
    "segvol_total",
    "segvol_fingerprint",
    "nnunet_npfp2",
    "nnunet_default",
    "nnunet_fingerprint",
    "io_floor",
]


def render_markdown(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        f"### Preprocessing: segvol vs nnU-Net v2 vs I/O floor ({report['date']})",
        "",
        f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, "
        f"{m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}.  ",
        f"Versions: segvolpipe {v.get('segvolpipe')} (git {v.get('segvolpipe_git')}), torch {v.get('torch')} "
        f"(ours) / {v.get('nnunet_torch')} (nnU-Net venv), nnunetv2 {v.get('nnunetv2')}, "
        f"nibabel {v.get('nibabel')}.  ",
        f"Each figure is the median of {report['repeats']} run(s) (all steps interleaved, outputs deleted "
        f"before every run); {report['np']} worker processes everywhere. Peak RSS = the largest sum of "
        f"VmRSS over the whole process tree, polled every {int(C.SAMPLE_INTERVAL_S * 1000)} ms (counts "
        "pages shared by forked workers once per process); peak PSS = the same with proportional set "
        "size (shared pages split), polled every 200 ms; largest process = ru_maxrss of the biggest single process. CPU s = "
        "user+system seconds of the measured tree, and those the rest of the machine used meanwhile "
        "(non-zero means something else competed for the cores).",
        "",
    ]
    if report.get("skipped"):
        for why in report["skipped"]:
            lines.append(f"**Not measured:** {why}  ")
        lines.append("")
    for ds in report["datasets"]:
        lines.append(
            f"**Dataset {ds['id']}: {ds['cases']} CT phantom cases of {'×'.join(map(str, ds['size']))} "
            f"(z×y×x), made by `{ds['phantoms']}`**"
        )
        lines.append("")
        rows = []
        for key in ROW_ORDER:
            s = ds["steps"].get(key)
            if s is None:
                continue
            n_runs = len(s["summary"]["runs"])
            status = f"{s['summary']['n_ok']}/{n_runs}"
            if s["summary"]["n_ok"] < n_runs:
                rcs = sorted({r["returncode"] for r in s["summary"]["runs"] if r["returncode"] != 0})
                status += f" (failed: rc {', '.join(map(str, rcs))})"
            sm = s["summary"]
            spread = f"{C.fmt(sm['wall_min_s'])}–{C.fmt(sm['wall_max_s'])}" if sm["n_ok"] > 1 else ""
            rows.append(
                [
                    s["label"],
                    C.fmt(sm["wall_s"]),
                    spread,
                    C.fmt(sm["peak_rss_mib"], 0),
                    C.fmt(sm["peak_pss_mib"], 0),
                    C.fmt(sm["max_single_rss_mib"], 0),
                    f"{C.fmt(sm.get('cpu_s'))} / {C.fmt(sm.get('other_cpu_s'))}",
                    status,
                ]
            )
        lines.append(
            C.markdown_table(
                [
                    "Step",
                    "Wall (s)",
                    "Wall range (s)",
                    "Peak RSS, tree (MiB)",
                    "Peak PSS, tree (MiB)",
                    "Largest process (MiB)",
                    "CPU s: tree / rest of machine",
                    "OK runs",
                ],
                rows,
            )
        )
        lines.append("")
        if ds["ratios"]:
            rows = [
                [r["label"], C.fmt_ratio(r["wall"]), C.fmt_ratio(r["rss"]), C.fmt_ratio(r["pss"])]
                for r in ds["ratios"]
            ]
            lines.append(C.markdown_table(["Ratio", "Wall", "Peak RSS", "Peak PSS"], rows))
            lines.append("")
    lines.append(
        "Commands (run from the repository root; `segvol` and `python` from `.venv/bin`, the "
        "`nnUNetv2_*` entry points from `benchmarks/_work/nnunet-venv/bin`; `<out>` is a fresh "
        "folder under `benchmarks/_work/out/<step>`):"
    )
    lines.append("")
    for cmd in dict.fromkeys(
        re.sub(r"Dataset\d{3}_[A-Za-z0-9_-]+", "Dataset<id>_<name>", c) for c in report["commands"]
    ):
        lines.append(f"    {cmd}")
    lines.append("")
    return "\n".join(lines)


RATIOS = [
    ("segvol_total", "nnunet_npfp2", "segvol total / nnU-Net (-np 2 -npfp 2)"),
    ("segvol_total", "nnunet_default", "segvol total / nnU-Net (-np 2, default -npfp 8)"),
    ("segvol_total", "io_floor", "segvol total / I/O floor"),
    ("segvol_fingerprint", "nnunet_fingerprint", "segvol fingerprint / nnU-Net extract_fingerprint"),
    ("nnunet_npfp2", "io_floor", "nnU-Net (-np 2 -npfp 2) / I/O floor"),
]


def compute_ratios(steps: dict) -> list[dict]:
    out = []
    for a, b, label in RATIOS:
        if a in steps and b in steps:
            sa, sb = steps[a]["summary"], steps[b]["summary"]
            out.append(
                {
                    "label": label,
                    "wall": C.ratio(sa["wall_s"], sb["wall_s"]),
                    "rss": C.ratio(sa["peak_rss_mib"], sb["peak_rss_mib"]),
                    "pss": C.ratio(sa["peak_pss_mib"], sb["peak_pss_mib"]),
                }
            )
    return out


def _generic_command(display: str, dataset_id: int) -> str:
    """A step's command with scratch paths replaced by placeholders, for the report."""
    s = display.replace(f"-d {dataset_id}", "-d <id>")
    for marker in ("benchmarks/_work/out/",):
        while marker in s:
            i = s.index(marker)
            j = i + len(marker)
            k = j
            while k < len(s) and s[k] not in " ":
                k += 1
            s = s[:i] + "<out>" + s[k:]
    s = s.replace("benchmarks/_work/raw", "<raw>")
    return re.sub(r"Dataset\d{3}_[A-Za-z0-9_-]+", "Dataset<id>_<name>", s)


# ----------------------------------------------------------------------------------------------------------
# Main


def segvol_commands_available() -> list[str]:
    """Which of make-phantoms / plan-preprocess are missing from our CLI."""
    if not SEGVOL.exists():
        return ["make-phantoms", "plan-preprocess"]
    res = subprocess.run([str(SEGVOL), "--help"], capture_output=True, text=True)
    text = res.stdout + res.stderr
    return [c for c in ("make-phantoms", "plan-preprocess") if c not in text]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of every step per dataset (median reported)")
    p.add_argument("--quick", action="store_true", help="only the 6-case dataset, 1 repeat")
    p.add_argument("--np", type=int, default=2, help="worker processes for every tool (default 2)")
    p.add_argument("--skip-nnunet", action="store_true", help="do not run nnU-Net (e.g. its venv is missing)")
    p.add_argument(
        "--skip-segvol",
        action="store_true",
        help="do not run segvol plan-preprocess (for testing the harness before it exists)",
    )
    p.add_argument(
        "--phantoms",
        choices=("segvol", "builtin"),
        default="segvol",
        help="make the datasets with `segvol make-phantoms` (default) or a builtin stand-in",
    )
    p.add_argument(
        "--ras",
        action="store_true",
        help="pass --ras to make-phantoms (all files RAS; by default they come in varied orientations, "
        "which nnU-Net does not reorient)",
    )
    p.add_argument("--setup-nnunet", action="store_true", help="create/complete nnU-Net's venv, then go on")
    p.add_argument("--setup-only", action="store_true", help="with --setup-nnunet: stop after the set-up")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measured run before it is killed")
    p.add_argument("--out", type=Path, default=WORK / "bench_preprocess.json", help="JSON results file")
    p.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the Markdown of an earlier results file"
    )
    p.add_argument("--io-floor-worker", nargs=2, metavar=("RAW_DATASET", "OUT_DIR"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _terminate(signum, frame):  # noqa: ARG001
    # SIGTERM -> SystemExit, so that run_measured kills the measured command's session on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    if args.io_floor_worker:
        io_floor_worker(Path(args.io_floor_worker[0]), Path(args.io_floor_worker[1]), args.np)
        return 0
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    if args.setup_nnunet:
        ensure_nnunet_venv()
        if args.setup_only:
            return 0

    skipped: list[str] = []
    with_nnunet = not args.skip_nnunet
    if with_nnunet:
        problems = check_nnunet_venv()
        if problems:
            print(
                "nnU-Net's venv is not usable:\n  "
                + "\n  ".join(problems)
                + "\nRun with --setup-nnunet to create it, or --skip-nnunet to leave nnU-Net out.",
                file=sys.stderr,
            )
            return 2
    else:
        problems = check_nnunet_venv()
        why = "; ".join(problems) if problems else "venv present but left out on request"
        skipped.append(f"nnU-Net v2 (--skip-nnunet: {why}); no nnU-Net figures below, none estimated.")
    with_segvol = not args.skip_segvol
    missing = segvol_commands_available()
    if with_segvol and "plan-preprocess" in missing:
        print(
            "`segvol plan-preprocess` does not exist yet (segvol --help does not list it); "
            "use --skip-segvol to measure only the others.",
            file=sys.stderr,
        )
        return 2
    if not with_segvol:
        skipped.append("segvol plan-preprocess (--skip-segvol); no segvol figures below.")
    if args.phantoms == "segvol" and "make-phantoms" in missing:
        print(
            "`segvol make-phantoms` does not exist yet; use --phantoms builtin for a stand-in dataset.",
            file=sys.stderr,
        )
        return 2

    repeats = 1 if args.quick else args.repeats
    datasets = QUICK_DATASETS if args.quick else FULL_DATASETS
    dirs = {"raw": WORK / "raw", "out": WORK / "out"}
    logs_root = WORK / "logs"
    machine = C.machine_info()
    main_py = MAIN_PYTHON if MAIN_PYTHON.exists() else Path(sys.executable)
    ours = C.package_versions(main_py, ["segvolpipe", "torch", "nibabel", "numpy"])
    theirs = (
        C.package_versions(_venv_python(NNUNET_VENV), ["nnunetv2", "torch", "numpy", "SimpleITK"])
        if _venv_python(NNUNET_VENV).exists()
        else {}
    )
    versions = {
        **ours,
        "segvolpipe_git": C.git_revision(REPO),
        "nnunetv2": theirs.get("nnunetv2"),
        "nnunet_torch": theirs.get("torch"),
        "nnunet_numpy": theirs.get("numpy"),
        "nnunet_simpleitk": theirs.get("SimpleITK"),
    }
    report = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "repeats": repeats,
        "ras": args.ras,
        "np": args.np,
        "quick": args.quick,
        "phantoms": args.phantoms,
        "sample_interval_s": C.SAMPLE_INTERVAL_S,
        "skipped": skipped,
        "datasets": [],
        "commands": [],
    }
    print(f"machine: {machine}\nversions: {versions}", flush=True)
    for why in skipped:
        print("NOT MEASURED: " + why, flush=True)

    for dataset_id, cases, size in datasets:
        logs = logs_root / str(dataset_id)
        dirs["raw"].mkdir(parents=True, exist_ok=True)
        for old in dirs["raw"].glob(f"Dataset{dataset_id:03d}_*"):
            shutil.rmtree(old)
        t0 = time.perf_counter()
        if args.phantoms == "segvol":
            gen_cmd = make_phantoms_segvol(dirs["raw"], dataset_id, cases, size, logs, ras=args.ras)
            gen = shlex.join([_short(c) for c in gen_cmd])
        else:
            gen_cmd = make_phantoms_builtin(dirs["raw"], dataset_id, cases, size)
            gen = gen_cmd[0]
        raw_dataset = dataset_folder(dirs["raw"], dataset_id)
        print(
            f"\n== {raw_dataset.name}: {cases} cases {size} made in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        steps = build_steps(dataset_id, raw_dataset, args.np, dirs, with_segvol, with_nnunet)
        results: dict[str, list[C.RunResult]] = {s["key"]: [] for s in steps}
        for r in range(repeats):
            for step in steps:
                prev = results[step["key"]]
                if prev and not prev[-1].ok:
                    continue  # failed once: do not spend the time again
                res = run_step(step, logs, r, args.timeout)
                prev.append(res)
                print(
                    f"  [{r + 1}/{repeats}] {step['label']:<55} {res.wall_s:7.1f} s  RSS {res.peak_rss_mib:7.0f} MiB"
                    f"  PSS {res.peak_pss_mib:7.0f} MiB  max1 {res.max_single_rss_mib:6.0f} MiB"
                    f"  procs {res.max_procs:2d}  cpu {res.cpu_s:5.1f}+{res.other_cpu_s:4.1f} s"
                    f"  rc {res.returncode}  out {res.outputs}",
                    flush=True,
                )
                if not res.ok:
                    print(
                        f"    FAILED, log {res.log}:\n"
                        + "\n".join("      " + ln for ln in res.log_tail.splitlines()),
                        flush=True,
                    )
        ds_steps = {}
        for step in steps:
            summary = C.summarize(results[step["key"]])
            ds_steps[step["key"]] = {
                "label": step["label"],
                "command": step["display"],
                "summary": C.asdict(summary),
            }
            generic = _generic_command(step["display"], dataset_id)
            if generic not in report["commands"]:
                report["commands"].append(generic)
        report["datasets"].append(
            {
                "id": dataset_id,
                "folder": raw_dataset.name,
                "cases": cases,
                "size": list(size),
                "phantoms": gen,
                "steps": ds_steps,
                "ratios": compute_ratios(ds_steps),
            }
        )
        shutil.rmtree(dirs["out"], ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))  # after every dataset, so a crash keeps the first

    md = render_markdown(report)
    report["markdown"] = md
    args.out.write_text(json.dumps(report, indent=2))
    (args.out.with_suffix(".md")).write_text(md)
    print("\n" + md)
    print(f"results: {args.out} (and {args.out.with_suffix('.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
