"""MRML nodes <-> ``livertumor`` volumes, segmentations with standard terminology, lesion tables.

Uses only MRML and VTK classes (no ``slicer.app``, ``slicer.modules`` or Qt), so it runs in the Slicer
application, in ``Slicer --no-main-window`` and in plain Python with ``slicer-core``. Both modules of
the extension use it.

Geometry: Slicer nodes are RAS, ``livertumor`` is LPS like ITK and DICOM; a node's IJK-to-RAS matrix
maps onto the grid's spacing, origin and direction by flipping the first two rows. Arrays are (k, j, i)
= (z, y, x) in both.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from livertumor.errors import DimensionError, GridMismatchError, LiverTumorError
from livertumor.terminology import SegmentTerm, load_terms
from livertumor.volume import Grid, Volume

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
#: Node reference from a lesion table to the CT it measures.
VOLUME_REFERENCE_ROLE = "LiverTumorAI.volume"


def _slicer():
    import slicer  # the Slicer application's module, or slicer-core's outside it

    return slicer


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def grid_of_node(node) -> Grid:
    """The voxel grid (LPS) of a volume node."""
    image = node.GetImageData()
    if image is None:
        raise LiverTumorError(f"volume {node.GetName()!r} has no image data")
    matrix = _ijk_to_ras(node)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    direction = RAS_FROM_LPS @ (matrix[:3, :3] / spacing)
    origin = RAS_FROM_LPS @ matrix[:3, 3]
    return Grid(tuple(image.GetDimensions()[::-1]), tuple(spacing), tuple(origin), direction)


def volume_from_node(node) -> Volume:
    """A CT volume node as a :class:`Volume` (a copy), refusing what no CT is: several components or
    fewer than three dimensions."""
    image = node.GetImageData()
    name = node.GetName()
    if image is None:
        raise LiverTumorError(f"volume {name!r} has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise DimensionError(
            f"volume {name!r} has {image.GetNumberOfScalarComponents()} components per voxel: a CT is scalar"
        )
    dimensions = image.GetDimensions()
    if min(dimensions) < 2:
        raise DimensionError(f"volume {name!r} is {dimensions[0]}x{dimensions[1]}x{dimensions[2]}: a CT is 3D")
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dimensions[::-1]).copy()
    return Volume(array, grid_of_node(node))


def set_node_geometry(node, grid: Grid) -> None:
    """IJK-to-RAS of ``node`` from an LPS grid."""
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_FROM_LPS @ grid.direction * np.asarray(grid.spacing)
    matrix[:3, 3] = RAS_FROM_LPS @ np.asarray(grid.origin)
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, matrix[r, c])
    node.SetIJKToRASMatrix(vtk_matrix)


def _image_data(array: np.ndarray, image=None):
    image = image if image is not None else vtk.vtkImageData()
    array = np.ascontiguousarray(array)
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def add_volume_node(scene, volume: Volume, name: str, like=None, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node holding ``volume`` (under ``like``'s parent transform, if any)."""
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    node.SetAndObserveImageData(_image_data(volume.array))
    set_node_geometry(node, volume.grid)
    node.CreateDefaultDisplayNodes()
    if like is not None and like.GetParentTransformNode() is not None:
        node.SetAndObserveTransformNodeID(like.GetParentTransformNode().GetID())
    return node


def add_segmentation_node(scene, reference_node, masks: list[tuple[str, np.ndarray]], name: str):
    """A new segmentation node on ``reference_node``'s grid with one segment per ``(term key, mask)``;
    names, colours and terminology from the terminology file. Empty masks give empty segments (the
    user can draw in them)."""
    terms = load_terms()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    # The transform first: the reference geometry is taken relative to the node's own parent transform.
    if reference_node.GetParentTransformNode() is not None:
        node.SetAndObserveTransformNodeID(reference_node.GetParentTransformNode().GetID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    for key, mask in masks:
        add_segment(node, reference_node, mask, terms[key])
    return node


def apply_term(segment, term: SegmentTerm) -> None:
    """Name, colour and terminology of a segment from a terminology entry."""
    segment.SetName(term.name)
    segment.SetColor(*term.color)
    # SetTerminology() is Slicer 5.10+; the tag it writes is there since 4.x.
    segment.SetTag(segment.GetTerminologyEntryTagName(), term.terminology)


def add_segment(segmentation_node, reference_node, mask: np.ndarray, term: SegmentTerm) -> str:
    """A new segment holding ``mask`` (on ``reference_node``'s grid); returns its id."""
    slicer = _slicer()
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", term.name, list(term.color))
    apply_term(segmentation_node.GetSegmentation().GetSegment(segment_id), term)
    if mask.any():
        labelmap = slicer.vtkOrientedImageData()
        _image_data(mask.astype(np.uint8), labelmap)
        matrix = vtk.vtkMatrix4x4()
        reference_node.GetIJKToRASMatrix(matrix)
        labelmap.SetImageToWorldMatrix(matrix)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )
    return segment_id


def segment_mask(segmentation_node, segment_id: str, reference_node) -> np.ndarray:
    """One segment as a bool array on ``reference_node``'s grid, read without adding nodes to the scene.

    A segment is placed by whole-voxel offset, so it must lie on the reference's voxel lattice (same
    spacing and axes, origin a whole number of voxels away) and under the same parent transform; else
    :class:`GridMismatchError`: resample it onto the CT first."""
    slicer = _slicer()
    name = segmentation_node.GetName()
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise LiverTumorError(f"segmentation {name!r} has no segment {segment_id!r}")
    if segmentation_node.GetParentTransformNode() is not reference_node.GetParentTransformNode():
        raise GridMismatchError(
            f"segmentation {name!r} and volume {reference_node.GetName()!r} lie under different transforms; "
            "harden the transforms or put both under the same one first"
        )
    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(labelmap_name):
        segmentation.CreateRepresentation(labelmap_name)  # e.g. a segmentation imported as surfaces
    image = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, image, False):
        raise LiverTumorError(f"segment {segment_id!r} of {name!r} cannot be read as a label map")
    reference = grid_of_node(reference_node)
    mask = np.zeros(reference.shape, bool)
    extent = image.GetExtent()
    if image.GetPointData().GetScalars() is None or extent[1] < extent[0]:
        return mask  # an empty segment
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    to_world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    to_reference = np.linalg.inv(_ijk_to_ras(reference_node)) @ to_world
    if not (
        np.allclose(to_reference[:3, :3], np.eye(3), atol=1e-4)
        and np.allclose(to_reference[:3, 3], np.round(to_reference[:3, 3]), atol=1e-3)
    ):
        raise GridMismatchError(
            f"segmentation {name!r} lies on another voxel grid than volume {reference_node.GetName()!r}: "
            f"{_grid_of_matrix(to_world, extent).describe()} vs {reference.describe()}; resample it onto the CT first"
        )
    dimensions = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dimensions[::-1])
    inside = values == segment.GetLabelValue()  # shared label maps hold several segments, one value each
    start = (np.round(to_reference[:3, 3]).astype(int) + np.array(extent[::2]))[::-1]
    source, target = [], []
    for axis in range(3):
        low, high = max(0, start[axis]), min(reference.shape[axis], start[axis] + inside.shape[axis])
        if high <= low:
            return mask
        source.append(slice(low - start[axis], high - start[axis]))
        target.append(slice(low, high))
    mask[tuple(target)] = inside[tuple(source)]
    return mask


def _grid_of_matrix(ijk_to_ras: np.ndarray, extent) -> Grid:
    """The LPS grid of an IJK-to-RAS matrix over an extent (for messages)."""
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    shape = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3))[::-1]
    origin = ijk_to_ras @ np.array([extent[0], extent[2], extent[4], 1.0])
    direction = RAS_FROM_LPS @ (ijk_to_ras[:3, :3] / spacing)
    return Grid(shape, tuple(spacing), tuple(RAS_FROM_LPS @ origin[:3]), direction)


def lesion_table(scene, lesions: list[dict], name: str, volume_node=None, extra_columns: dict[str, list] | None = None):
    """A locked table node: one row per lesion (id, volume mL, longest axial diameter mm, centroid R, A,
    S mm) plus ``extra_columns`` (name -> one value per lesion). ``lesions`` hold the keys of
    ``LesionMeasurement.to_json()``, as ``livertumor classify`` reports them too. Column names are the
    headers (not an editable first row) and the table is read-only, so the columns that jump-to-lesion
    and Set class read cannot be renamed; ``volume_node`` (the CT) is referenced for its transform."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    columns = {
        "id": [int(m["id"]) for m in lesions],
        "volume (mL)": [round(m["volume_ml"], 3) for m in lesions],
        "longest axial diameter (mm)": [round(m["longest_axial_diameter_mm"], 1) for m in lesions],
    }
    ras = [RAS_FROM_LPS @ np.asarray(m["centroid_lps_mm"]) for m in lesions]
    for axis, label in enumerate("RAS"):
        columns[f"centroid {label} (mm)"] = [round(float(p[axis]), 2) for p in ras]
    columns.update(extra_columns or {})
    vtk_table = table.GetTable()
    for column, values in columns.items():
        array = (
            vtk.vtkIntArray()
            if column == "id"
            else (vtk.vtkStringArray() if values and isinstance(values[0], str) else vtk.vtkDoubleArray())
        )
        array.SetName(column)
        for value in values:
            array.InsertNextValue(value)
        vtk_table.AddColumn(array)
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)
    if volume_node is not None:
        table.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    table.Modified()
    return table


def table_rows(table) -> list[dict]:
    """A table node's rows as dictionaries (column name -> value)."""
    vtk_table = table.GetTable()
    names = [vtk_table.GetColumnName(c) for c in range(vtk_table.GetNumberOfColumns())]
    return [
        {
            name: vtk_table.GetValue(row, c).ToString()
            if vtk_table.GetColumn(c).IsA("vtkStringArray")
            else vtk_table.GetValue(row, c).ToDouble()
            for c, name in enumerate(names)
        }
        for row in range(vtk_table.GetNumberOfRows())
    ]


def lesion_centre_ras(table, row: int) -> tuple[float, float, float]:
    """Where to centre the views for a row of a lesion table: world RAS mm, through the parent
    transform of the table's CT (the centroids are in the CT's own frame)."""
    values = table_rows(table)[row]
    point = [float(values[f"centroid {axis} (mm)"]) for axis in "RAS"]
    volume = table.GetNodeReference(VOLUME_REFERENCE_ROLE)
    parent = volume.GetParentTransformNode() if volume is not None else None
    if parent is not None:
        to_world = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(to_world)
        point = list(to_world.TransformPoint(point))
    return (point[0], point[1], point[2])


def selected_table_rows(source_rows: list[int], table) -> list[int]:
    """Table rows from the rows of a table view's selection, already mapped from the sort proxy to the
    table model (``view.sortFilterProxyModel().mapToSource(index).row()``): each row once, in order,
    only rows the table has. With column titles as headers (see :func:`lesion_table`) model row r is
    table row r."""
    count = table.GetTable().GetNumberOfRows()
    return sorted({row for row in source_rows if 0 <= row < count})
