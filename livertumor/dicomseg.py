"""DICOM SEG output: a 0/1/2 label map as a DICOM Segmentation object that references the CT series it
was made from, so that PACS viewers, OHIF and Slicer (QuantitativeReporting) show it on that series.

Binary segmentation (one frame per segment and slice, empty frames left out): the type every DICOM SEG
reader supports, unlike the newer LABELMAP type. Segments *Liver* and *Liver tumor* carry the SNOMED CT
codes of the extension's terminology file (``livertumor.terminology``), the model as the algorithm and
"research use" in the content description. Written with highdicom (``pip install 'livertumor[dicom]'``),
atomically.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageWriteError, LiverTumorError
from .io import atomic_path, dicom_series_files
from .terminology import load_terms
from .volume import Volume

#: What a DICOM SEG must copy or reference from each source image. Anonymisers that blank them (as in
#: TotalSegmentator's example series) leave nothing to reference.
REFERENCED_ATTRIBUTES = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
#: Patient and study attributes a SEG copies from its source; DICOM lets them be empty, not absent.
COPIED_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
#: Label value -> terminology key, in segment order.
SEGMENTS = {1: "liver", 2: "tumor"}
#: Added to the source series' number: the SEG series sorts right after its CT in a viewer's list.
SERIES_NUMBER_OFFSET = 1000


def _highdicom():
    try:
        import highdicom
    except ImportError:
        raise LiverTumorError(
            "DICOM SEG output needs highdicom, which is not installed: pip install 'livertumor[dicom]'"
        ) from None
    return highdicom


@dataclass(frozen=True)
class DicomSource:
    """The header of each image of a source series, in the order GDCM sorts (and ITK reads) them."""

    folder: Path
    datasets: list


def read_dicom_source(folder: str | os.PathLike, series_uid: str | None = None) -> DicomSource:
    """Headers of the DICOM series a SEG will reference; refuses (one line) a folder that is not a DICOM
    series or whose images lack the identifiers a SEG must reference."""
    import pydicom

    _highdicom()
    folder = Path(folder)
    if not folder.is_dir():
        raise LiverTumorError(
            f"DICOM SEG output references the source DICOM series, and {folder} is not a DICOM folder: "
            "choose --format .seg.nrrd or .nii.gz for a volume file"
        )
    files = dicom_series_files(folder, series_uid)
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    for ds in datasets:  # in-memory headers only: the source files are never touched
        # An empty character set (seen in anonymised series) means the default one; highdicom refuses ''.
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
        for keyword in COPIED_TYPE_2:  # may be empty in a SEG, but must be there; anonymisers drop them
            if keyword not in ds:
                setattr(ds, keyword, "")
    missing = sorted({key for ds in datasets for key in REFERENCED_ATTRIBUTES if not str(ds.get(key) or "").strip()})
    if missing:
        raise LiverTumorError(
            f"{folder}: the DICOM images have no {', '.join(missing)} (anonymised without new UIDs?), which a "
            "DICOM SEG must reference: choose --format .seg.nrrd or .nii.gz"
        )
    return DicomSource(folder, datasets)


def _frame_planes(labels: Volume, source: DicomSource) -> list[int]:
    """The label map's slice index of each source image, checked to lie on the label map's grid."""
    planes = []
    for ds in source.datasets:
        index = labels.grid.physical_to_index(np.asarray(ds.ImagePositionPatient, np.float64))
        plane = round(float(index[0]))
        if np.abs(index - [plane, 0, 0]).max() > 0.01 or not 0 <= plane < labels.shape[0]:
            raise ImageWriteError(
                f"{source.folder}: image {ds.SOPInstanceUID} does not lie on the label map's grid "
                f"(index {np.round(index, 3).tolist()}): the labels were not made from this series"
            )
        if (int(ds.Rows), int(ds.Columns)) != labels.shape[1:]:
            raise ImageWriteError(
                f"{source.folder}: image {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, the label map's slices "
                f"{labels.shape[1]}x{labels.shape[2]}"
            )
        planes.append(plane)
    return planes


def write_dicom_seg(labels: Volume, source: DicomSource, path: str | os.PathLike, model: str) -> Path:
    """Write the 0/1/2 ``labels`` (on the grid of the CT read from ``source``) as a binary DICOM SEG at
    ``path`` that references ``source``'s images; ``model`` ("name:version") names the algorithm. A
    *Liver tumor* segment is always written (empty when nothing was found), *Liver* when present."""
    from pydicom.sr.codedict import codes

    from . import __version__

    hd = _highdicom()
    path = Path(path)
    terms = load_terms()
    frames = labels.array[_frame_planes(labels, source)]
    present = [value for value in SEGMENTS if value == 2 or (frames == value).any()]
    numbered = np.zeros(frames.shape, np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(
        name="LiverTumorAI", family=codes.cid7162.ArtificialIntelligence, version=f"{__version__} {model}"
    )
    for number, value in enumerate(present, start=1):
        numbered[frames == value] = number
        term = terms[SEGMENTS[value]]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=term.name,
                segmented_property_category=_coded(hd, term.category),
                segmented_property_type=_coded(hd, term.type),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[_coded(hd, term.region)] if term.region else None,
                display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in term.color)),
            )
        )
    first = source.datasets[0]
    with warnings.catch_warnings():
        # highdicom's style remarks on the source's own values (e.g. a one-part patient name) are not ours
        # to fix and would reach every user as console noise.
        warnings.simplefilter("ignore", UserWarning)
        segmentation = hd.seg.Segmentation(
            source_images=source.datasets,
            pixel_array=numbered,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(first.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="LiverTumorAI",
            manufacturer_model_name=model[:64],
            software_versions=__version__,
            device_serial_number="0",
            series_description=f"LiverTumorAI {model}"[:64],
            content_label="LIVERTUMORAI",
            content_description="Liver and liver tumour; research use only, not for diagnosis",
            omit_empty_frames=bool(numbered.any()),
        )
    with atomic_path(path) as temporary:
        segmentation.save_as(temporary)
    return path


def _coded(hd, code: tuple[str, str, str]):
    scheme, value, meaning = code
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
