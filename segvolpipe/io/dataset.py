"""The raw dataset: ``dataset.json`` schema, case discovery and the header-level integrity check.

The layout is nnU-Net v2's raw format, unchanged::

    DatasetXXX_Name/dataset.json
    DatasetXXX_Name/imagesTr/{case}_{channel:04d}{file_ending}   labelsTr/{case}{file_ending}
    DatasetXXX_Name/imagesTs/{case}_{channel:04d}{file_ending}   [labelsTs/{case}{file_ending}]

Checks that need the voxel data (NaN/Inf, undeclared label values) run in the fingerprint pass, which
reads every case once anyway; see :mod:`segvolpipe.fingerprint`.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segvolpipe.errors import Problems, UserError
from segvolpipe.io.atomic import read_json

REQUIRED_KEYS = {"channel_names": dict, "labels": dict, "numTraining": int, "file_ending": str}
FILE_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class RawCase:
    """One case: its channel files (in channel order) and its label file (None for unlabelled test cases)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None

    def files(self) -> tuple[Path, ...]:
        return self.images + ((self.label,) if self.label else ())


@dataclass(frozen=True)
class DatasetSpec:
    """The validated content of ``dataset.json``.

    Attributes:
        channel_names: Channel names in channel order, e.g. ``("CT",)``.
        labels: ``(name, id)`` pairs in id order, background first.
        num_training: ``numTraining``.
        file_ending: ``.nii.gz`` or ``.nii``.
    """

    name: str
    channel_names: tuple[str, ...]
    labels: tuple[tuple[str, int], ...]
    num_training: int
    file_ending: str
    raw: dict[str, Any]

    @property
    def label_ids(self) -> tuple[int, ...]:
        return tuple(i for _, i in self.labels)

    @property
    def foreground_labels(self) -> tuple[tuple[str, int], ...]:
        return tuple((n, i) for n, i in self.labels if i != 0)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> DatasetSpec:
        """Validate ``dataset.json`` content, reporting every problem at once."""
        problems: list[UserError] = []
        for key, typ in REQUIRED_KEYS.items():
            if key not in data:
                problems.append(UserError(f"missing key {key!r}", path))
            elif not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool)):
                kind = {"dict": "an object", "int": "an integer", "str": "a string"}[typ.__name__]
                problems.append(UserError(f"{key!r} must be {kind}, got {type(data[key]).__name__}", path))
        if problems:
            raise Problems(f"{path}: invalid dataset.json", problems)
        channels = _parse_channels(data["channel_names"], path, problems)
        labels = _parse_labels(data["labels"], path, problems)
        if data["file_ending"] not in FILE_ENDINGS:
            problems.append(UserError(f"file_ending must be one of {FILE_ENDINGS}, got {data['file_ending']!r}", path))
        if data["numTraining"] < 1:
            problems.append(UserError("numTraining must be at least 1", path))
        if problems:
            raise Problems(f"{path}: invalid dataset.json", problems)
        return cls(
            name=str(data.get("name", path.parent.name)),
            channel_names=channels,
            labels=labels,
            num_training=int(data["numTraining"]),
            file_ending=str(data["file_ending"]),
            raw=data,
        )


def _parse_channels(raw: dict[str, Any], path: Path, problems: list[UserError]) -> tuple[str, ...]:
    keys = list(raw)
    if not keys:
        problems.append(UserError("channel_names is empty", path))
        return ()
    if not all(isinstance(k, str) and k.isdigit() for k in keys):
        problems.append(UserError(f"channel_names keys must be '0', '1', ...; got {keys}", path))
        return ()
    if sorted(int(k) for k in keys) != list(range(len(keys))):
        problems.append(UserError(f"channel_names keys must be consecutive from '0'; got {sorted(keys)}", path))
        return ()
    if not all(isinstance(v, str) and v.strip() for v in raw.values()):
        problems.append(UserError("channel_names values must be non-empty strings", path))
        return ()
    return tuple(str(raw[str(i)]) for i in range(len(keys)))


def _parse_labels(raw: dict[str, Any], path: Path, problems: list[UserError]) -> tuple[tuple[str, int], ...]:
    pairs: list[tuple[str, int]] = []
    for name, value in raw.items():
        if isinstance(value, list | tuple):
            problems.append(UserError(f"label {name!r}: region-based labels (lists) are not supported", path))
            return ()
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(UserError(f"label {name!r} must map to an integer, got {value!r}", path))
            return ()
        pairs.append((str(name), int(value)))
    pairs.sort(key=lambda p: p[1])
    ids = [i for _, i in pairs]
    if 0 not in ids:
        problems.append(UserError("labels must include background with value 0", path))
    elif ids != list(range(len(ids))):
        problems.append(UserError(f"label values must be consecutive integers from 0; got {ids}", path))
    return tuple(pairs)


def load_dataset_spec(folder: Path) -> DatasetSpec:
    """Read and validate ``folder/dataset.json``."""
    path = folder / "dataset.json"
    if not path.exists():
        raise UserError("dataset.json not found (every raw dataset needs one)", path)
    return DatasetSpec.from_json(read_json(path), path)


def discover_cases(
    folder: Path, spec: DatasetSpec, split: str = "Tr", require_labels: bool = True
) -> tuple[list[RawCase], list[UserError], int]:
    """Find the cases of ``images{split}``/``labels{split}``.

    Returns:
        ``(complete cases, problems, number of distinct case ids among the image files)``.

    Problems: files that are not ``{case}_{XXXX}{ending}``, symbolic links to nothing, channel indices outside
    ``channel_names``, missing channels, images without a label (when ``require_labels``), labels without images.
    A link to an existing file anywhere is followed like a file (raw data is often linked in, not copied).
    """
    problems: list[UserError] = []
    ending = spec.file_ending
    n_channels = len(spec.channel_names)
    image_dir, label_dir = folder / f"images{split}", folder / f"labels{split}"
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$")
    channels: dict[str, dict[int, Path]] = defaultdict(dict)
    broken: set[str] = set()  # cases with a dangling image link: reported once, not again as missing files
    if image_dir.is_dir():
        for p in sorted(image_dir.iterdir()):
            if p.name.startswith("."):
                continue
            m = pattern.match(p.name)
            if m and _dangling(p, problems):
                broken.add(m.group("case"))
                continue
            if not m or not p.is_file():
                problems.append(UserError(f"unexpected file (expected {{case}}_XXXX{ending})", p))
                continue
            ch = int(m.group("ch"))
            if ch >= n_channels:
                problems.append(UserError(f"channel {ch} but dataset.json declares {n_channels} channel(s)", p))
                continue
            channels[m.group("case")][ch] = p
    labels: dict[str, Path] = {}
    broken_labels: set[str] = set()
    if label_dir.is_dir():
        for p in sorted(label_dir.iterdir()):
            if p.name.startswith("."):
                continue
            if p.name.endswith(ending) and _dangling(p, problems):
                broken_labels.add(p.name[: -len(ending)])
                continue
            if not p.name.endswith(ending) or not p.is_file():
                problems.append(UserError(f"unexpected file (expected {{case}}{ending})", p))
                continue
            labels[p.name[: -len(ending)]] = p
    cases: list[RawCase] = []
    for case_id in sorted(set(channels) - broken):
        files = channels[case_id]
        missing = [i for i in range(n_channels) if i not in files]
        if missing:
            problems.append(UserError(f"case {case_id!r} lacks channel(s) {missing}", image_dir))
            continue
        label = labels.get(case_id)
        if label is None and require_labels:
            if case_id not in broken_labels:  # a dangling label link is reported already
                problems.append(UserError(f"case {case_id!r} has no label file {case_id}{ending}", label_dir))
            continue
        cases.append(RawCase(case_id, tuple(files[i] for i in range(n_channels)), label))
    for case_id, p in sorted(labels.items()):
        if case_id not in channels and case_id not in broken:
            problems.append(UserError(f"label without image files ({case_id}_0000{ending} missing)", p))
    return cases, problems, len(set(channels) | broken)


def _dangling(path: Path, problems: list[UserError]) -> bool:
    """Whether ``path`` is a symbolic link to nothing (then a problem naming it and its target is added)."""
    if not path.is_symlink() or path.exists():
        return False
    problems.append(UserError(f"broken symbolic link: its target {path.readlink()} does not exist", path))
    return True


def check_headers(cases: list[RawCase]) -> list[UserError]:
    """Header-level checks of every file: readable NIfTI, 3D, valid affine, channels and label on one grid."""
    from segvolpipe.io.nifti import read_geometry

    problems: list[UserError] = []
    for case in cases:
        try:
            reference = read_geometry(case.images[0])
        except UserError as exc:
            problems.append(exc)
            continue
        for p in case.files()[1:]:
            try:
                geom = read_geometry(p)
            except UserError as exc:
                problems.append(exc)
                continue
            if geom.shape != reference.shape:
                problems.append(UserError(f"shape {geom.shape} differs from {case.images[0].name} {reference.shape}", p))
            elif not geom.same_grid(reference):
                problems.append(UserError(f"affine differs from {case.images[0].name} (spacing, origin or direction)", p))
    return problems


def load_training_cases(folder: Path, headers: bool = True) -> tuple[DatasetSpec, list[RawCase]]:
    """Validate dataset.json, discover the training cases and check every header; all problems at once.

    Args:
        folder: The raw dataset folder.
        headers: Check every file's header here. A caller that reads every file right after (the
            fingerprint, which checks the same things) passes False; the headers are still checked when
            discovery found problems, so that the report is complete.

    Raises:
        Problems: anything wrong, each problem one line naming its file.
    """
    spec = load_dataset_spec(folder)
    cases, problems, found = discover_cases(folder, spec, "Tr", require_labels=True)
    if not found:
        problems.append(UserError("no training cases found", folder / "imagesTr"))
    elif found != spec.num_training:
        problems.append(UserError(f"numTraining is {spec.num_training} but {found} training case(s) were found", folder / "dataset.json"))
    if headers or problems:
        problems.extend(check_headers(cases))
    if problems:
        raise Problems(f"{folder}: the raw dataset has {len(problems)} problem(s)", problems)
    return spec, cases


def files_hash(paths: list[Path], extra: str = "") -> str:
    """A hash of file names, sizes and modification times (cheap; changes when any file changes)."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
