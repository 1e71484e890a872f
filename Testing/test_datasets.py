"""Data set layouts: LiTS, Medical Segmentation Decathlon and plain pairs, and their missing-pair errors."""

from __future__ import annotations

import pytest

from livertumor.datasets import find_cases
from livertumor.errors import DatasetError, MissingPairError


def touch(folder, *names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_lits_layout_pairs_by_number_in_natural_order(tmp_path):
    touch(tmp_path, "batch1/volume-10.nii", "batch1/segmentation-10.nii", "volume-2.nii.gz", "segmentation-2.nii.gz")
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["case-2", "case-10"]
    assert cases[1].image.name == "volume-10.nii" and cases[1].label.name == "segmentation-10.nii"


def test_decathlon_layout(tmp_path):
    touch(tmp_path, "imagesTr/liver_3.nii.gz", "labelsTr/liver_3.nii.gz", "imagesTs/liver_9.nii.gz")
    (case,) = find_cases(tmp_path)
    assert case.name == "liver_3" and case.label.parent.name == "labelsTr"


def test_plain_pairs(tmp_path):
    touch(tmp_path, "a.nrrd", "a_seg.nrrd", "b.mha", "b_label.mha")
    assert [(c.image.name, c.label.name) for c in find_cases(tmp_path)] == [
        ("a.nrrd", "a_seg.nrrd"),
        ("b.mha", "b_label.mha"),
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("volume-1.nii", "segmentation-1.nii", "volume-2.nii"), "volume-2.nii has no label map"),
        (("imagesTr/x.nii.gz", "labelsTr/y.nii.gz"), "x.nii.gz has no label map; y.nii.gz has no image"),
        (("c.nii", "c_seg.nii", "d_seg.nii"), "d_seg.nii has no image"),
    ],
)
def test_missing_pairs_are_named(tmp_path, files, message):
    touch(tmp_path, *files)
    with pytest.raises(MissingPairError, match=message):
        find_cases(tmp_path)


def test_folder_without_volumes(tmp_path):
    touch(tmp_path, "notes.txt")
    with pytest.raises(DatasetError, match="holds no volumes"):
        find_cases(tmp_path)
