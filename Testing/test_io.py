"""CT IO: every real file reads with the geometry its headers state (read independently), and each bad
input gets its own specific error."""

from __future__ import annotations

import gzip
import shutil

import nibabel
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import DIRECTIONS

from livertumor.errors import (
    DimensionError,
    GridMismatchError,
    ImageReadError,
    LabelValueError,
    LiverTumorError,
    NotCTError,
)
from livertumor.io import read_ct, read_image, read_label, write_volume
from livertumor.volume import Grid, Volume


def dicom_geometry(folder):
    """Spacing, origin, direction (x,y,z LPS) and the HU array of a DICOM series, from pydicom headers."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    row, col = (np.asarray(slices[0].ImageOrientationPatient[i : i + 3], float) for i in (0, 3))
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(normal, np.asarray(s.ImagePositionPatient, float))))
    positions = np.array([np.asarray(s.ImagePositionPatient, float) for s in slices])
    gaps = np.diff(positions @ normal)
    spacing = (float(slices[0].PixelSpacing[1]), float(slices[0].PixelSpacing[0]), float(np.mean(gaps)))
    hu = np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices])
    return spacing, positions[0], np.column_stack([row, col, normal]), hu


@pytest.mark.parametrize("series", ["totalsegmentator/example_ct_dicom", "dcmqi/ct-3slice"])
def test_dicom_series_geometry_and_values_match_pydicom(real_data, series):
    folder = real_data / series
    spacing, origin, direction, hu = dicom_geometry(folder)
    ct = read_ct(folder)
    assert ct.shape == hu.shape
    np.testing.assert_allclose(ct.spacing, spacing, rtol=1e-6)
    np.testing.assert_allclose(ct.origin, origin, atol=1e-4)
    np.testing.assert_allclose(ct.direction, direction, atol=1e-6)
    np.testing.assert_array_equal(ct.array, hu.astype(np.float32))


def test_nifti_geometry_matches_nibabel_affine(real_data):
    path = real_data / "totalsegmentator/example_ct.nii.gz"
    image = nibabel.load(path)
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # NIfTI is RAS, ITK is LPS
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    ct = read_ct(path)
    assert ct.shape == image.shape[::-1]
    np.testing.assert_allclose(ct.spacing, spacing, rtol=1e-6)
    np.testing.assert_allclose(ct.origin, affine_lps[:3, 3], atol=1e-4)
    np.testing.assert_allclose(ct.direction, affine_lps[:3, :3] / spacing, atol=1e-6)
    assert ct.grid.orientation() == "RAS"  # stored flipped: the LPS-flipped real case
    np.testing.assert_array_equal(ct.array, np.asarray(image.dataobj).transpose(2, 1, 0))


def test_nrrd_label_matches_header_and_lies_on_its_ct(real_data):
    path = real_data / "dcmqi/liver_seg.nrrd"
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    directions = np.asarray(header["space directions"], float)  # one row per axis
    ct = read_ct(real_data / "dcmqi/ct-3slice")
    label = read_label(path, allowed=(0, 1), reference=ct.grid)  # DICOM z spacing 0.99999999 vs 1.0
    np.testing.assert_allclose(label.origin, header["space origin"], atol=1e-6)
    np.testing.assert_allclose(label.spacing, np.linalg.norm(directions, axis=1), rtol=1e-9)
    np.testing.assert_allclose(label.direction, (directions / np.linalg.norm(directions, axis=1)[:, None]).T)
    np.testing.assert_array_equal(label.array, data.transpose(2, 1, 0))
    assert 0 < label.array.mean() < 0.5


def test_dicom_seg_reads_as_mask_equal_to_nrrd(real_data):
    seg = read_label(real_data / "dcmqi/liver.dcm", allowed=(0, 1))
    mask = read_label(real_data / "dcmqi/liver_seg.nrrd", allowed=(0, 1))
    mask.grid.require_same(seg.grid)
    np.testing.assert_array_equal(seg.array, mask.array)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_write_read_round_trip_keeps_geometry_exactly(tmp_path, suffix, direction):
    rng = np.random.default_rng(0)
    volume = Volume.from_array(
        rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16),
        (0.7, 0.8, 2.5),
        (-12.5, 30.25, -400.0),
        DIRECTIONS[direction],
    )
    path = write_volume(volume, tmp_path / f"ct{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-7)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [f"ct{suffix}"]  # no temporary file left behind


def test_interrupted_write_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "ct.nii.gz"
    target.write_bytes(b"previous content")

    def write_half_then_fail(image, path, useCompression):
        with open(path, "wb") as handle:
            handle.write(b"half a fi")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_volume(_ct(), target)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]


def _ct(shape=(4, 5, 6), low=-1000, high=400, dtype=np.int16):
    rng = np.random.default_rng(1)
    return Volume.from_array(rng.integers(low, high, shape).astype(dtype))


def test_2d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(tmp_path / "slice.nii"))
    with pytest.raises(DimensionError, match="2D"):
        read_ct(tmp_path / "slice.nii")


def test_single_slice_3d_image_is_refused_as_2d(tmp_path):
    write_volume(_ct((1, 8, 8)), tmp_path / "one.nii")
    with pytest.raises(DimensionError, match="single slice"):
        read_ct(tmp_path / "one.nii")


def test_4d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(tmp_path / "series.nii"))
    with pytest.raises(DimensionError, match="4D"):
        read_ct(tmp_path / "series.nii")


def test_multi_component_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(DimensionError, match="3 components"):
        read_ct(tmp_path / "rgb.nrrd")


def test_mr_like_values_are_not_ct(tmp_path):
    write_volume(_ct(low=0, high=4000, dtype=np.uint16), tmp_path / "mr.nii.gz")
    with pytest.raises(NotCTError, match="no air or fat"):
        read_ct(tmp_path / "mr.nii.gz")


def test_8bit_picture_is_not_ct(tmp_path):
    write_volume(_ct(low=0, high=256, dtype=np.uint8), tmp_path / "picture.nrrd")
    with pytest.raises(NotCTError, match=r"0\.\.255"):
        read_ct(tmp_path / "picture.nrrd")


def test_mask_is_not_ct(tmp_path):
    write_volume(
        Volume.from_array(np.where(np.arange(120).reshape(4, 5, 6) % 2, 100, -1000).astype(np.int16)),
        tmp_path / "mask.nii",
    )
    with pytest.raises(NotCTError, match="only 2 distinct values"):
        read_ct(tmp_path / "mask.nii")
    # a label map stored as -1000/0/1000 passes every range check but is no scan either
    labels = np.array([-1000, 0, 1000], np.int16)[np.arange(480).reshape(8, 6, 10) % 3]
    write_volume(Volume.from_array(labels), tmp_path / "labels.nrrd")
    with pytest.raises(NotCTError, match="only 3 distinct values"):
        read_ct(tmp_path / "labels.nrrd")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_voxels_are_refused_in_every_format(tmp_path, suffix, bad):
    ct = _ct(low=-1000, high=1000, dtype=np.float32)
    ct.array[1, 2, 3] = bad
    write_volume(ct, tmp_path / f"ct{suffix}")
    # ITK reads NaN in a NIfTI as 0 HU without a word: the reader checks the file itself
    with pytest.raises(LiverTumorError, match="1 voxels that are NaN or infinite"):
        read_ct(tmp_path / f"ct{suffix}")


def test_truncated_file_is_reported(tmp_path, real_data):
    source = real_data / "totalsegmentator/example_ct.nii.gz"
    raw = gzip.decompress(source.read_bytes())
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="unreadable or truncated"):
        read_ct(tmp_path / "cut.nii")
    shutil.copy(source, tmp_path / "cut.nii.gz")
    data = (tmp_path / "cut.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="unreadable or truncated"):
        read_ct(tmp_path / "cut.nii.gz")


def test_unreadable_and_missing_files_are_reported(tmp_path):
    (tmp_path / "junk.nrrd").write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="unreadable"):
        read_image(tmp_path / "junk.nrrd")
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "absent.nii")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="without a readable DICOM series"):
        read_image(tmp_path / "empty")


def test_label_with_unexpected_values_is_refused(tmp_path):
    label = np.zeros((4, 5, 6), np.uint8)
    label[1, 1, 1], label[2, 2, 2] = 2, 7
    write_volume(Volume.from_array(label), tmp_path / "seg.nii")
    with pytest.raises(LabelValueError, match=r"values 7, but only \(0, 1, 2\)"):
        read_label(tmp_path / "seg.nii")


def test_label_on_another_grid_is_refused(tmp_path):
    image = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    write_volume(Volume.from_array(np.zeros((4, 5, 6), np.uint8), (1.0, 1.0, 2.5)), tmp_path / "seg.nii")
    with pytest.raises(GridMismatchError, match="not on the same voxel grid"):
        read_label(tmp_path / "seg.nii", reference=image)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from livertumor.io import write_text_atomic

    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_grid_mismatch_is_one_line_naming_each_grid_in_the_sentences_order():
    first = Grid((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    second = Grid((4, 5, 6), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    with pytest.raises(GridMismatchError) as caught:
        first.require_same(second, "the CT", "the lesion mask")
    message = str(caught.value)
    assert "\n" not in message
    assert message.index("the CT:") < message.index("(1, 1, 2)") < message.index("the lesion mask:")
    assert message.index("the lesion mask:") < message.index("(1, 1, 3)")
