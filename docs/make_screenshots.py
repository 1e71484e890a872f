"""Render the user guide's pictures headless from a real MRML scene (slicer-core):

    python docs/make_screenshots.py [--model demo-curriculum] [--lesion-model demo-lesions]

Loads the Sample Data phantom and its truth segmentation with Slicer's storage nodes, runs both modules'
Logic exactly as the GUI does (out of process), and writes into docs/screenshots/:
* ``segmentation.png``: the axial slice with the most tumour, the segments the model made as contours;
* ``classification.png``: the truth lesions classified by the lesion model, coloured by class;
* ``lesion-table.png``: the lesion table node as the module shows it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "LiverTumorCurriculum"), str(REPO / "LiverLesionClassify")]

import numpy as np  # noqa: E402
import slicer  # noqa: E402
from LiverLesionClassifyLib import LiverLesionClassifyLogic  # noqa: E402
from LiverTumorCurriculumLib import LiverTumorCurriculumLogic  # noqa: E402

from livertumor.plotting import pyplot, radiological_axial, save_figure  # noqa: E402
from LiverTumorAICommon import mrml  # noqa: E402

SAMPLE = REPO / "LiverTumorCurriculum" / "Resources" / "SampleData"
OUT = REPO / "docs" / "screenshots"


def load(scene):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "LiverTumorPhantom")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(str(SAMPLE / "LiverTumorPhantom.nrrd"))
    reader.ReadData(volume)
    truth = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "truth")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(SAMPLE / "LiverTumorPhantom.seg.nrrd"))
    storage.ReadData(truth)
    return volume, truth


def segments(segmentation, volume):
    result = []
    for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(index)
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        result.append((segment.GetName(), segment.GetColor(), mrml.segment_mask(segmentation, segment_id, volume)))
    return result


def slice_picture(volume, segmentation, title: str, path: Path) -> None:
    plt = pyplot()
    ct = mrml.volume_from_node(volume)
    parts = segments(segmentation, volume)
    lesions = sum((mask for name, _, mask in parts if name != "Liver"), np.zeros(ct.shape, bool))
    index = int(np.argmax(lesions.reshape(ct.shape[0], -1).sum(1)))
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.imshow(radiological_axial(ct.array, ct.grid, index), cmap="gray", vmin=-160, vmax=240)
    for name, color, mask in parts:
        if mask[index].any():
            view = radiological_axial(mask, ct.grid, index).astype(float)
            axis.contour(view, levels=[0.5], colors=[color], linewidths=1.2)
            axis.plot([], [], color=color, label=name)
    axis.legend(loc="lower left", fontsize=7, framealpha=0.7)
    axis.set_title(f"{title}\naxial slice {index} (patient right on the left, anterior up)", fontsize=9)
    axis.axis("off")
    save_figure(figure, path)


def table_picture(table, path: Path) -> None:
    plt = pyplot()
    rows = mrml.table_rows(table)
    columns = [c for c in rows[0] if c != "segment"]

    def cell(column: str, value) -> str:
        if column == "id":
            return str(int(value))  # the table stores numbers as doubles
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    cells = [[cell(c, row[c]) for c in columns] for row in rows]
    headers = [c.replace(" (", "\n(").replace("longest axial", "longest\naxial") for c in columns]
    figure, axis = plt.subplots(figsize=(1.1 * len(columns), 0.35 * (len(rows) + 2) + 0.3))
    axis.axis("off")
    grid = axis.table(cellText=cells, colLabels=headers, loc="center")
    grid.auto_set_font_size(False)
    grid.set_fontsize(7)
    for (row, _), table_cell in grid.get_celld().items():
        if row == 0:
            table_cell.set_height(table_cell.get_height() * 2.2)  # two-line headers
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--lesion-model")
    args = parser.parse_args()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    volume, truth = load(scene)
    OUT.mkdir(parents=True, exist_ok=True)
    result = LiverTumorCurriculumLogic(scene).start_segment(volume, args.model, "cpu").wait()
    slice_picture(
        volume, result.segmentation, "LiverTumorCurriculum: demo model on the phantom", OUT / "segmentation.png"
    )
    table = LiverLesionClassifyLogic(scene).classify(volume, truth, args.lesion_model, "cpu")
    slice_picture(volume, truth, "LiverLesionClassify: phantom lesions by class", OUT / "classification.png")
    table_picture(table, OUT / "lesion-table.png")
    print(f"wrote {sorted(p.name for p in OUT.glob('*.png'))}")


if __name__ == "__main__":
    main()
