"""Reading and writing CT volumes and label maps (NIfTI, NRRD, MHA, DICOM series) with exact geometry.

Everything goes through SimpleITK, so geometry arrives in LPS exactly as ITK (and Slicer's readers) see it.
Writes are atomic: a file is written next to its destination under a temporary name and then renamed,
so an interrupted write never leaves a half-written file where a good one was expected.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from .errors import DimensionError, ImageReadError, ImageWriteError, LabelValueError, NotCTError
from .volume import Grid, Volume

#: File endings SimpleITK reads that this library accepts as volumes.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Tumour label maps of this project: 0 background, 1 liver, 2 tumour (LiTS convention).
LITS_LABELS = (0, 1, 2)

# Plausible Hounsfield range. Air is -1000; scanners pad outside the field of view with -1024..-3024;
# the densest metal implants saturate at 3071 (12-bit) or up to ~30000 (extended scales).
_HU_MIN, _HU_MAX = -4000.0, 32767.0


def volume_suffix(path: str | os.PathLike) -> str:
    """The recognised ending of ``path`` (``.nii.gz`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), "")


def volume_stem(path: str | os.PathLike) -> str:
    """The file name without its volume ending (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    return name[: len(name) - len(volume_suffix(name))]


def from_sitk(image: sitk.Image, source: str = "the image") -> Volume:
    """Convert a 3D scalar SimpleITK image to a :class:`Volume` (array copied, geometry exact).

    Raises :class:`DimensionError`, naming ``source``, for anything but a 3D scalar image.
    """
    _require_3d_scalar(image, source)
    grid = Grid(
        shape=image.GetSize()[::-1],
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.asarray(image.GetDirection()).reshape(3, 3),
    )
    return Volume(sitk.GetArrayFromImage(image), grid)


def to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image with the same geometry."""
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.ravel()))
    return image


def _require_3d_scalar(image: sitk.Image, source: str) -> None:
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise DimensionError(
            f"{source} has {components} components per voxel (colour or vector image); "
            "a CT or label map has one value per voxel"
        )
    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension != 3:
        raise DimensionError(f"{source} is {dimension}D (size {size}); a 3D volume is needed")
    if min(size) < 2:
        raise DimensionError(
            f"{source} is a single slice (size {size}): a 2D image, but a 3D volume of several slices is needed"
        )


@contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK's warnings go to stderr unasked (e.g. GDCM's "No Series were found"); our errors say it."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def dicom_series_files(folder: Path, series_uid: str | None = None) -> list[str]:
    """The files of the DICOM series ``series_uid`` in ``folder``, sorted by slice position as GDCM sorts
    them (None: the folder's only series)."""
    with _quiet_itk():
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))  # a UID may be empty
    if not series:
        raise ImageReadError(f"{folder} is a folder without a readable DICOM series")
    if series_uid is None:
        if len(series) > 1:
            raise ImageReadError(
                f"{folder} holds {len(series)} DICOM series; choose one with --series: "
                + ", ".join(repr(uid) for uid in series)
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise ImageReadError(f"{folder} holds no DICOM series {series_uid!r} (it has {', '.join(series)})")
    with _quiet_itk():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder, series_uid))
    reader.MetaDataDictionaryArrayUpdateOn()  # the slices' positions, read in the same pass
    with _quiet_itk():  # ITK's own "non uniform sampling" warning; the check below says it in one line
        image = reader.Execute()
    _check_slice_gaps(folder, reader)
    return image


def _check_slice_gaps(folder: Path, reader: sitk.ImageSeriesReader) -> None:
    """Refuse a series with missing or unreadable slices (GDCM leaves out what it cannot parse): ITK
    would spread the slices it has over the whole range and report a wrong slice spacing (3 missing
    slices of 20 read as 2.375 mm, not 2.0)."""
    count = len(reader.GetFileNames())
    if count < 3 or not reader.HasMetaDataKey(0, "0020|0032") or not reader.HasMetaDataKey(0, "0020|0037"):
        return
    row_col = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    normal = np.cross(row_col[:3], row_col[3:])
    positions = [
        float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")], normal)) for i in range(count)
    ]
    steps = np.diff(np.sort(positions))
    typical = float(np.median(steps))
    if typical <= 0 or np.any(np.abs(steps - typical) > 0.1 * typical):
        gaps = [f"{step:.3g}" for step in steps if abs(step - typical) > 0.1 * typical][:3]
        raise ImageReadError(
            f"{folder}: the slices are not evenly spaced (usually {typical:.3g} mm, but {', '.join(gaps)} mm "
            "between some): slices are missing or unreadable, or two series are mixed"
        )


class _NiftiLayout(NamedTuple):
    endian: str
    datatype: int
    offset: int
    voxels: int
    bitpix: int

    @property
    def data_end(self) -> int:
        return self.offset + self.voxels * self.bitpix // 8


def _nifti_layout(header: bytes) -> _NiftiLayout | None:
    """Byte order, data type and voxel data placement of a NIfTI header, or None if it is not NIfTI."""
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", header[:4]) if len(header) >= 4 else (0,)
        if size == 348 and len(header) >= 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            (offset,) = struct.unpack(endian + "f", header[108:112])
            break
        if size == 540 and len(header) >= 540:  # NIfTI-2
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            (offset,) = struct.unpack(endian + "q", header[168:176])
            break
    else:
        return None
    voxels = int(np.prod([max(1, d) for d in dims[1 : 1 + max(1, dims[0])]]))
    return _NiftiLayout(endian, int(datatype), int(offset), voxels, int(bitpix))


def _nifti_open(path: Path):
    return open(path, "rb") if path.name.lower().endswith(".nii") else gzip.open(path, "rb")


#: NIfTI float data types (16 float32, 64 float64) -> numpy type.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_nonfinite(path: Path, layout: _NiftiLayout) -> int:
    """How many NaN or infinite voxels a float NIfTI holds: ITK reads them as 0 without a word."""
    if layout.datatype not in _NIFTI_FLOATS:
        return 0
    dtype = np.dtype(layout.endian + _NIFTI_FLOATS[layout.datatype])
    count, left = 0, layout.voxels
    with _nifti_open(path) as stream:
        stream.read(layout.offset)
        while left:
            values = np.frombuffer(stream.read(min(left, 1 << 22) * dtype.itemsize), dtype)
            if not values.size:
                break
            count += int(values.size - np.count_nonzero(np.isfinite(values)))
            left -= values.size
    return count


def _nifti_missing_bytes(path: Path, layout: _NiftiLayout) -> int:
    """How many bytes of voxel data a NIfTI file lacks. ITK reads a cut ``.nii`` or ``.nii.gz`` silently,
    filling the rest with zeros, so this is checked here."""
    expected = layout.data_end
    if path.name.lower().endswith(".nii"):
        return max(0, expected - path.stat().st_size)
    with open(path, "rb") as handle:  # a whole gzip member ends with its length mod 2**32
        handle.seek(-4, os.SEEK_END)
        (stored,) = struct.unpack("<I", handle.read(4))
    if stored == expected % 2**32:
        return 0
    received = 0
    with gzip.open(path, "rb") as stream:  # unusual layout (several members): decompress to be sure
        try:
            while chunk := stream.read(1 << 24):
                received += len(chunk)
        except EOFError:
            pass
    return max(0, expected - received)


def _check_nifti(path: Path) -> None:
    """What ITK does not say about a NIfTI file: data cut short, NaN or infinite voxels."""
    try:
        with _nifti_open(path) as stream:
            layout = _nifti_layout(stream.read(540))
        if layout is None:
            return
        missing = _nifti_missing_bytes(path, layout)
        nonfinite = 0 if missing else _nifti_nonfinite(path, layout)
    except (OSError, EOFError, zlib.error):  # gzip's BadGzipFile is an OSError
        raise ImageReadError(f"cannot read {path}: its compressed data is damaged or it is not gzip") from None
    if missing:
        raise ImageReadError(
            f"cannot read {path}: the file is unreadable or truncated (it ends {missing} bytes before its voxel data)"
        )
    if nonfinite:
        raise ImageReadError(f"{path} has {nonfinite} voxels that are NaN or infinite: not a valid image")


def _check_declared_size(path: Path) -> None:
    """Refuse a header that declares more voxel data than its file can hold, before ITK allocates it
    (a 2 MB NRRD claiming 2048x2048x1000 made ITK take 8 GB). Compressed data is allowed the best ratio
    zlib reaches (1032:1)."""
    name = path.name.lower()
    declared, available = 0, 0
    if name.endswith((".hdr", ".img")):  # Analyze / NIfTI pair: the layout of NIfTI-1, data in .img
        header, data = path.with_suffix(".hdr"), path.with_suffix(".img")
        if header.is_file() and data.is_file():
            with open(header, "rb") as handle:
                layout = _nifti_layout(handle.read(348))
            if layout is not None:
                declared, available = layout.data_end, data.stat().st_size
    elif name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
        fields = _text_header_fields(head)
        sizes = fields.get("sizes") or fields.get("dimsize")
        kind = (fields.get("type") or fields.get("elementtype") or "").lower()
        if sizes and kind and "data file" not in fields and fields.get("elementdatafile", "local").lower() == "local":
            try:
                voxels = int(np.prod([int(float(v)) for v in sizes.split()]))
            except (ValueError, OverflowError):  # a damaged header: 'þ12', 'nan', 'inf'
                raise ImageReadError(f"cannot read {path}: its header's sizes {sizes!r} are not numbers") from None
            declared = voxels * _element_bytes(kind)
            compressed = fields.get("encoding", "raw").lower() not in ("raw",) or fields.get(
                "compresseddata", "false"
            ).lower() in ("true", "1")
            available = path.stat().st_size * (1032 if compressed else 1)
    if declared > available > 0 or (declared and not available):
        raise ImageReadError(
            f"cannot read {path}: its header declares {declared:,} bytes of voxel data, more than the file holds"
        )


def _text_header_fields(head: bytes) -> dict[str, str]:
    """``key: value`` / ``Key = Value`` fields of an NRRD or MetaImage header (lower-case keys)."""
    fields = {}
    for line in head.split(b"\n"):
        if not line.strip():
            break  # NRRD: the data follows a blank line
        text = line.decode("latin-1").strip()
        key, separator, value = text.partition("=" if " = " in text else ":")
        if separator:
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
        if key.strip().lower() == "elementdatafile":
            break  # MetaImage: the data follows this field
    return fields


def _element_bytes(kind: str) -> int:
    """Bytes per voxel of an NRRD ``type`` or MetaImage ``ElementType``."""
    for names, size in (
        (("double", "met_double", "int64", "uint64", "long long", "met_long_long", "met_ulong_long"), 8),
        (("float", "met_float", "int", "uint", "int32", "uint32", "met_int", "met_uint"), 4),
        (("short", "ushort", "int16", "uint16", "met_short", "met_ushort", "unsigned short"), 2),
    ):
        if kind in names:
            return size
    return 1


def _read_file(path: Path) -> sitk.Image:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    else:
        _check_declared_size(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    # A binary DICOM SEG unpacks its 1-bit frames as 0/255; a segmentation is a 0/1 mask.
    if reader.HasMetaDataKey("0008|0060") and reader.GetMetaData("0008|0060").strip() == "SEG":
        if reader.HasMetaDataKey("0062|0001") and reader.GetMetaData("0062|0001").strip() == "BINARY":
            image = sitk.Cast(image > 0, sitk.sitkUInt8)
    return image


def read_image(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a 3D scalar volume from a file or a DICOM series folder, values unchanged.

    A single-segment binary DICOM SEG reads as a 0/1 mask on its own grid (for multi-segment SEG objects,
    export a label map from Slicer or dcmqi).

    Raises :class:`ImageReadError` for a missing, unreadable or truncated file and
    :class:`DimensionError` for anything that is not a 3D scalar volume.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path} does not exist")
    try:
        image = _read_dicom_series(path, series_uid) if path.is_dir() else _read_file(path)
    except OSError as error:
        raise ImageReadError(f"cannot read {path}: {error.strerror or error}") from None
    except RuntimeError as error:
        # ITK's message is long; its last line says why (e.g. "Premature EOF" for a truncated file).
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise ImageReadError(f"cannot read {path}: the file is unreadable or truncated ({reason})") from error
    return from_sitk(image, str(path))


#: At most this many distinct values (over every 8th slice) make a volume a label map, not a CT.
_LABEL_MAP_MAX_VALUES = 16


def check_ct_values(volume: Volume, source: str = "the image") -> None:
    """Raise :class:`NotCTError` unless the values look like Hounsfield units of a body CT.

    A CT of the abdomen always holds air or fat below -100 HU; an MR, a PET or an 8-bit picture holds
    no negative values, and a binary mask only two values.
    """
    array = volume.array
    if array.dtype == np.bool_ or array.dtype == np.uint8:
        raise NotCTError(f"{source} is stored as {array.dtype} (0..255): a picture or mask, not a CT in HU")
    if array.dtype.kind == "f":
        # NaN fails every comparison below and would pass them all; one NaN changes a whole result.
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NotCTError(f"{source} has {bad} voxels that are NaN or infinite: not a valid CT")
    low, high = float(array.min()), float(array.max())
    if low < _HU_MIN or high > _HU_MAX:
        raise NotCTError(f"{source} has values {low:g}..{high:g}, outside any CT's Hounsfield range")
    if low > -100:
        raise NotCTError(
            f"{source} has values {low:g}..{high:g}: no air or fat below -100 HU, so it is not a CT in "
            "Hounsfield units (an MR, a 0..255 picture or an already windowed image?)"
        )
    distinct = np.unique(array[:: max(1, array.shape[0] // 8)]).size
    if distinct <= _LABEL_MAP_MAX_VALUES:  # a scan's noise alone gives hundreds of values
        raise NotCTError(f"{source} holds only {distinct} distinct values: a mask or label map, not a CT")


def read_ct(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a CT volume in HU (as float32) and check that its values are CT values."""
    volume = read_image(path, series_uid)
    check_ct_values(volume, str(path))
    return volume.with_array(volume.array.astype(np.float32, copy=False))


def check_label_values(volume: Volume, allowed: Iterable[int] = LITS_LABELS, source: str = "the label map") -> None:
    """Raise :class:`LabelValueError` if ``volume`` holds a value outside ``allowed``."""
    allowed = tuple(int(a) for a in allowed)
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.mod(array, 1) == 0):
        raise LabelValueError(f"{source} holds non-integer values; a label map holds integers {allowed}")
    values = np.unique(array)
    unexpected = [v.item() for v in values if int(v) not in allowed]
    if unexpected:
        shown = ", ".join(f"{v:g}" for v in unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
        raise LabelValueError(f"{source} holds values {shown}, but only {allowed} are expected")


def read_label(
    path: str | os.PathLike, allowed: Iterable[int] | None = LITS_LABELS, reference: Grid | None = None
) -> Volume:
    """Read a label map as uint8, checking its values (``allowed=None`` skips that) and, if given,
    that it lies on ``reference`` (its image's grid)."""
    volume = read_image(path)
    if allowed is not None:
        check_label_values(volume, allowed, str(path))
    if reference is not None:
        volume.grid.require_same(reference, f"the label map {path}", "its image")
    return volume.with_array(volume.array.astype(np.uint8))


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool | None = None) -> Path:
    """Write ``volume`` atomically to ``path`` (format from the ending). Returns the path.

    ``compress`` defaults to True for ``.nii.gz`` and ``.nrrd``, False otherwise.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise ImageReadError(f"cannot write {path}: use one of the endings {', '.join(VOLUME_SUFFIXES)}")
    if compress is None:
        compress = suffix in (".nii.gz", ".nrrd")
    with atomic_path(path) as temporary:
        sitk.WriteImage(to_sitk(volume), str(temporary), useCompression=compress)
    return path


def ordinary_permissions(path: Path) -> None:
    """Give a file made by ``mkstemp`` / a folder made by ``mkdtemp`` (both private) the permissions a
    plain ``open()`` / ``mkdir()`` would, so shared installs can read what we write."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same ending) to write to; renamed to ``path`` when the block ends
    without error, removed otherwise. Readers never see a half-written file; a failure keeps the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=volume_suffix(path), dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        ordinary_permissions(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as JSON atomically; NaN never appears (undefined metrics are null)."""
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file or folder (through links, ``..`` and hard links)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder/.livertumor.lock`` while a run writes into ``folder``: a second run refuses at once
    instead of replacing the first one's results at the end. A lock left by a run that died is taken
    over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".livertumor.lock"
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = path.read_text().strip() if path.is_file() else ""
            if owner.isdigit() and _process_alive(int(owner)):
                raise ImageWriteError(
                    f"another livertumor run (process {owner}) is writing into {folder}; wait for it to end or "
                    "choose another output folder"
                ) from None
            path.unlink(missing_ok=True)  # its run died
        except OSError as error:
            raise ImageWriteError(f"cannot write into {folder}: {error.strerror}") from None
    else:
        raise ImageWriteError(f"cannot take the lock {path}")
    try:
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        yield
    finally:
        path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


#: Segments of a ``.seg.nrrd`` written from a 0/1/2 label map: label value -> terminology key.
SEGMENTATION_TERMS = {1: "liver", 2: "tumor"}


def write_segmentation(labels: Volume, path: str | os.PathLike) -> Path:
    """Write a 0/1/2 label map as a Slicer segmentation file (``.seg.nrrd``): one layer, a *Liver* and a
    *Liver tumor* segment with the extension's names, colours and terminology (segments absent from the
    map are left out), atomically. Slicer opens it as a segmentation node on the label map's grid."""
    from .terminology import load_terms

    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise ImageWriteError(f"cannot write {path} as a segmentation: its name must end in .seg.nrrd")
    terms = load_terms()
    image = to_sitk(labels.with_array(labels.array.astype(np.uint8)))
    extent = " ".join(f"0 {n - 1}" for n in labels.shape[::-1])
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    present = [value for value in SEGMENTATION_TERMS if (labels.array == value).any()]
    for index, value in enumerate(present):
        term = terms[SEGMENTATION_TERMS[value]]
        image.SetMetaData(f"Segment{index}_ID", f"Segment_{value}")
        image.SetMetaData(f"Segment{index}_Name", term.name)
        image.SetMetaData(f"Segment{index}_Color", " ".join(f"{c:.6g}" for c in term.color))
        image.SetMetaData(f"Segment{index}_LabelValue", str(value))
        image.SetMetaData(f"Segment{index}_Layer", "0")
        image.SetMetaData(f"Segment{index}_Extent", extent)
        image.SetMetaData(f"Segment{index}_Tags", f"TerminologyEntry:{term.terminology}|")
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
    return path
