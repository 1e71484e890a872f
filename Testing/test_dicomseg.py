"""DICOM SEG output: the label map round-trips voxel for voxel through a SEG that references its source
series (axial real CT and an oblique series written here), the codes and references are DICOM's, and
sources a SEG cannot reference are refused in one line before any inference."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from test_cli import run

from livertumor.dicomseg import read_dicom_source, write_dicom_seg
from livertumor.errors import ImageWriteError, LiverTumorError
from livertumor.io import read_ct
from livertumor.volume import Grid, Volume

hd = pytest.importorskip("highdicom")

LIVER_CODE, TUMOUR_CODE = "10200004", "108369006"


def _read_back(path, source) -> np.ndarray:
    """The SEG's segment numbers per source image, in the source's order."""
    seg = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in source.datasets]
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False, skip_overlap_checks=True)


def _label_map(ct: Volume, seed: int) -> Volume:
    rng = np.random.default_rng(seed)
    labels = np.zeros(ct.shape, np.uint8)
    labels[:, 100:400, 60:300] = 1
    for _ in range(4):
        z, y, x = rng.integers(0, ct.shape[0]), rng.integers(120, 360), rng.integers(80, 260)
        labels[z, y : y + 25, x : x + 18] = 2
    return ct.with_array(labels)


def _check_seg(path, source, labels: Volume) -> None:
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Liver tumor"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == [LIVER_CODE, TUMOUR_CODE]
    assert seg.SegmentSequence[1].AnatomicRegionSequence[0].CodeValue == LIVER_CODE
    first = source.datasets[0]
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    planes = [
        round(float(labels.grid.physical_to_index(np.asarray(ds.ImagePositionPatient, float))[0]))
        for ds in source.datasets
    ]
    np.testing.assert_array_equal(_read_back(path, source), labels.array[planes])


def test_labels_round_trip_through_a_seg_of_a_real_series(real_data, tmp_path):
    folder = real_data / "dcmqi/ct-3slice"
    ct = read_ct(folder)
    labels = _label_map(ct, seed=0)
    source = read_dicom_source(folder)
    written = write_dicom_seg(labels, source, tmp_path / "out_seg.dcm", "demo-curriculum:4")
    _check_seg(written, source, labels)
    assert not list(tmp_path.glob(".*"))  # nothing half-written left beside it


def _write_oblique_series(folder, array: np.ndarray, grid: Grid) -> None:
    """A minimal CT series of ``array`` on ``grid`` (oblique), one file per slice, with real UIDs."""
    study, series, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    folder.mkdir()
    for z in range(array.shape[0]):
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = (
            "P1",
            "Test^Oblique",
            "CT",
            3,
            z + 1,
        )
        ds.Rows, ds.Columns = array.shape[1:]
        ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
        ds.SliceThickness = grid.spacing[2]
        ds.ImageOrientationPatient = [*grid.direction[:, 0], *grid.direction[:, 1]]
        ds.ImagePositionPatient = grid.index_to_physical(np.array([z, 0, 0])).tolist()
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = array[z].astype(np.int16).tobytes()
        ds.save_as(folder / f"{z:03d}.dcm", enforce_file_format=True)


def test_oblique_series_keeps_every_voxel_in_place(tmp_path):
    from livertumor.phantom import make_phantom

    angle = np.deg2rad(20)
    direction = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    phantom = make_phantom(3, (12, 64, 48), (4.0, 3.0, 3.0))
    grid = Grid(phantom.ct.shape, (3.0, 3.0, 4.0), (-70.0, -90.0, 20.0), direction)
    folder = tmp_path / "oblique"
    _write_oblique_series(folder, np.clip(phantom.ct.array, -1024, 3000), grid)
    ct = read_ct(folder)
    assert ct.grid.is_oblique and np.allclose(ct.grid.direction, direction, atol=1e-5)
    labels = ct.with_array(phantom.label.array.astype(np.uint8))
    source = read_dicom_source(folder)
    seg_path = write_dicom_seg(labels, source, tmp_path / "oblique_seg.dcm", "tiny:1")
    planes = [
        round(float(ct.grid.physical_to_index(np.asarray(ds.ImagePositionPatient, float))[0])) for ds in source.datasets
    ]
    np.testing.assert_array_equal(_read_back(seg_path, source), labels.array[planes])


def test_sources_a_seg_cannot_reference_are_refused(real_data, tmp_path):
    with pytest.raises(LiverTumorError, match=r"no SOPClassUID, SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID"):
        read_dicom_source(real_data / "totalsegmentator/example_ct_dicom")  # anonymised to empty UIDs
    with pytest.raises(LiverTumorError, match="not a DICOM folder"):
        read_dicom_source(real_data / "totalsegmentator/example_ct_sm.nii.gz")
    folder = real_data / "dcmqi/ct-3slice"
    ct = read_ct(folder)
    shifted = Volume(np.zeros(ct.shape, np.uint8), Grid(ct.shape, ct.spacing, (0.0, 0.0, 0.0), ct.direction))
    with pytest.raises(ImageWriteError, match="does not lie on the label map's grid"):
        write_dicom_seg(shifted, read_dicom_source(folder), tmp_path / "x.dcm", "m:1")
    assert not (tmp_path / "x.dcm").exists()


def test_nothing_found_still_gives_a_valid_seg(real_data, tmp_path):
    folder = real_data / "dcmqi/ct-3slice"
    ct = read_ct(folder)
    source = read_dicom_source(folder)
    path = write_dicom_seg(ct.with_array(np.zeros(ct.shape, np.uint8)), source, tmp_path / "empty.dcm", "m:1")
    seg = hd.seg.segread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver tumor"]
    assert not _read_back(path, source).any()


def test_cli_writes_a_seg_for_dicom_input_and_refuses_other_input_first(real_data, tiny_model, tmp_path):
    folder = real_data / "dcmqi/ct-3slice"
    done = run("segment", folder, "-o", tmp_path, "--format", ".dcm", "--model", tiny_model, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    seg_path = tmp_path / "ct-3slice_seg.dcm"
    nifti = run("segment", folder, "-o", tmp_path, "--model", tiny_model, "--device", "cpu")
    assert nifti.returncode == 0, nifti.stderr
    from livertumor.io import read_label

    labels = read_label(tmp_path / "ct-3slice_seg.nii.gz", reference=read_ct(folder).grid)
    source = read_dicom_source(folder)
    seg = hd.seg.segread(seg_path)
    assert seg.ContentDescription.endswith("not for diagnosis") and "tiny" in seg.SeriesDescription
    numbers = {s.SegmentLabel: s.SegmentNumber for s in seg.SegmentSequence}
    back = _read_back(seg_path, source)
    expected = np.zeros(labels.shape, np.uint8)
    for value, name in ((1, "Liver"), (2, "Liver tumor")):
        if name in numbers:
            expected[labels.array == value] = numbers[name]
    np.testing.assert_array_equal(back, expected)
    for bad in (real_data / "totalsegmentator/example_ct_dicom", real_data / "totalsegmentator/example_ct_sm.nii.gz"):
        refused = run("segment", bad, "-o", tmp_path / "refused", "--format", ".dcm", "--model", tiny_model)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert not (tmp_path / "refused").exists()
