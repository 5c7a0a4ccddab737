"""Dataset id resolution: 17, 017, Dataset017_Name, the only one, and clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from segvolpipe.errors import UserError
from segvolpipe.paths import dataset_folder_name, parse_dataset_folder, resolve_dataset


def _mk(root: Path, *names: str) -> None:
    for n in names:
        (root / n).mkdir(parents=True)


def test_resolution_forms(tmp_path: Path) -> None:
    _mk(tmp_path, "Dataset017_BTCV", "Dataset018_Other", "not_a_dataset")
    assert resolve_dataset(17, tmp_path) == "Dataset017_BTCV"
    assert resolve_dataset("017", tmp_path) == "Dataset017_BTCV"
    assert resolve_dataset("Dataset018_Other", tmp_path) == "Dataset018_Other"


def test_only_dataset_is_chosen_and_several_are_listed(tmp_path: Path) -> None:
    _mk(tmp_path, "Dataset017_BTCV")
    assert resolve_dataset(None, tmp_path) == "Dataset017_BTCV"
    _mk(tmp_path, "Dataset018_Other")
    with pytest.raises(UserError, match="Dataset017_BTCV, Dataset018_Other"):
        resolve_dataset(None, tmp_path)


@pytest.mark.parametrize(("spec", "message"), [(99, "no dataset '99'"), ("btcv", "not a dataset id"), (None, "no dataset found")])
def test_errors(tmp_path: Path, spec, message: str) -> None:
    if spec != None:  # noqa: E711
        _mk(tmp_path, "Dataset017_BTCV")
    with pytest.raises(UserError, match=message):
        resolve_dataset(spec, tmp_path)


def test_two_datasets_with_one_id(tmp_path: Path) -> None:
    _mk(tmp_path, "Dataset017_A", "Dataset017_B")
    with pytest.raises(UserError, match="used by several folders"):
        resolve_dataset(17, tmp_path)


def test_folder_names() -> None:
    assert dataset_folder_name(5, "Phantom") == "Dataset005_Phantom"
    assert parse_dataset_folder("Dataset005_Phantom") == (5, "Phantom")
    assert parse_dataset_folder("Dataset5_Phantom") is None
    with pytest.raises(UserError):
        dataset_folder_name(1000, "X")
    with pytest.raises(UserError):
        dataset_folder_name(1, "bad name")
