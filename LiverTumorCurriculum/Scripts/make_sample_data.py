"""Write the module's sample data: a phantom CT and its truth segmentation (Liver, Liver tumor).

    python LiverTumorCurriculum/Scripts/make_sample_data.py

Runs with slicer-core (no Slicer application): the segmentation is a real ``.seg.nrrd`` written by
Slicer's own segmentation storage node, with the extension's terminology.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the module's Lib and the shared LiverTumorAICommon

import numpy as np  # noqa: E402
import slicer  # noqa: E402

from livertumor.io import write_volume  # noqa: E402
from livertumor.phantom import LESION_CLASSES, make_phantom  # noqa: E402
from livertumor.plotting import pyplot, save_figure  # noqa: E402
from LiverTumorAICommon import mrml  # noqa: E402

#: The field of view of the training phantoms (384 mm across, the anatomy at full size); 3 mm slices keep
#: the file small. A smaller field scales the anatomy down, which the demo model was not trained on.
SEED, SHAPE, SPACING = 7, (80, 256, 256), (3.0, 1.5, 1.5)


def main() -> None:
    out = HERE / "Resources" / "SampleData"
    phantom = make_phantom(
        seed=SEED,
        shape=SHAPE,
        spacing_zyx=SPACING,
        lesion_count=4,
        kinds=LESION_CLASSES,
        phase="portal-venous",
        diameters_mm=(18.0, 35.0, 22.0, 12.0),
    )
    write_volume(phantom.ct, out / "LiverTumorPhantom.nrrd")
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    volume = mrml.add_volume_node(scene, phantom.ct, "LiverTumorPhantom")
    label = phantom.label.array
    segmentation = mrml.add_segmentation_node(scene, volume, [("liver", label == 1), ("tumor", label == 2)], "truth")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(out / "LiverTumorPhantom.seg.nrrd"))
    if not storage.WriteData(segmentation):
        raise SystemExit("writing the segmentation failed")
    plt = pyplot()
    index = int(np.argmax((label == 2).reshape(label.shape[0], -1).sum(1)))
    figure, axis = plt.subplots(figsize=(2, 2))
    axis.imshow(phantom.ct.array[index], cmap="gray", vmin=-160, vmax=240)
    axis.axis("off")
    save_figure(figure, out / "LiverTumorPhantom.png")
    print(f"wrote {out}: {[f'{lesion.kind} {lesion.diameter_mm:.0f} mm' for lesion in phantom.lesions]}")


if __name__ == "__main__":
    main()
