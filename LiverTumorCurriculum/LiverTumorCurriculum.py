"""LiverTumorCurriculum: liver tumour segmentation with a three-stage curriculum 3D residual U-Net.

The widget is thin: a .ui file bound to a parameter node, a timer that polls the background job, and
the dialogs. All the work is in LiverTumorCurriculumLib (usable from the Python console and batch
scripts) and the ``livertumor`` library, which runs out of process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import qt
import slicer
from LiverTumorCurriculumLib import LiverTumorCurriculumLogic, dependencies, mrml
from LiverTumorCurriculumLib.widgetbase import JobWidgetMixin
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SAMPLE_DIR = Path(__file__).resolve().parent / "Resources" / "SampleData"
#: The phantom CT of the Sample Data module and its truth (Liver, Liver tumor segments).
SAMPLE_FILE = SAMPLE_DIR / "LiverTumorPhantom.nrrd"
SAMPLE_LABELS = SAMPLE_DIR / "LiverTumorPhantom.seg.nrrd"


class LiverTumorCurriculum(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Liver Tumor Curriculum"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorAI contributors"]
        self.parent.helpText = (
            "Segment liver tumours directly on a CT with a 3D residual U-Net trained by three-stage curriculum "
            "learning (whole volumes, tumour patches, whole volumes), and fine-tune it on your own annotated cases. "
            "Research use only, not for diagnosis."
        )
        self.parent.acknowledgementText = (
            "Method: Li et al., three-stage curriculum learning for liver tumour segmentation."
        )
        slicer.app.connect("startupCompleted()", register_sample_data)


def register_sample_data() -> None:
    """The phantom CT (synthetic abdomen with liver lesions) in the Sample Data module."""
    import SampleData

    if not SAMPLE_FILE.is_file():
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="LiverTumorAI",
        sampleName="LiverTumorPhantom",
        uris=SAMPLE_FILE.as_uri(),
        fileNames=SAMPLE_FILE.name,
        nodeNames="LiverTumorPhantom",
        thumbnailFileName=str(SAMPLE_FILE.with_suffix(".png")),
        loadFileType="VolumeFile",
    )


@parameterNodeWrapper
class LiverTumorCurriculumParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    quality: Annotated[str, Choice(["quality", "fast"])] = "quality"
    probabilities: bool = False


class LiverTumorCurriculumParameterLogic(ScriptedLoadableModuleLogic):
    """Only the parameter node; the work is LiverTumorCurriculumLogic's."""

    def getParameterNode(self):
        return LiverTumorCurriculumParameterNode(super().getParameterNode())


class LiverTumorCurriculumWidget(JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initJobs()
        self.result = None
        self.cases = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorCurriculum.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorCurriculumLogic()
        self.parameterLogic = LiverTumorCurriculumParameterLogic()
        self.connectScene()
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.editButton.connect("clicked(bool)", self.onEdit)
        self.ui.lesionTableView.connect("selectionChanged()", self.onLesionSelected)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.refreshModels()
        self.initializeParameterNode()

    def updateButtons(self, caller=None, event=None) -> None:
        running = self.job is not None
        has_input = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = has_input and not running
        self.ui.finetuneButton.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.editButton.enabled = self.result is not None

    def refreshModels(self) -> None:
        self.ui.modelSelector.clear()
        if dependencies.missing():
            self.ui.modelSelector.addItem("demo-curriculum (default)", "")
            return
        from livertumor.models import list_models

        for entry in list_models():
            if entry.kind == "segmentation":
                self.ui.modelSelector.addItem(f"{entry.name}:{entry.version} ({entry.source})", str(entry.path))

    def onApply(self) -> None:
        if not self.dependenciesReady():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Segmentation could not start.", waitCursor=True):
            job = self.logic.start_segment(
                parameters.inputVolume,
                model=self.ui.modelSelector.currentData or None,
                device=parameters.device,
                quality=parameters.quality,
                probabilities=parameters.probabilities,
                progress=self.showProgress,
            )
            self.startJob(job, "segmenting...")

    def onFinetune(self) -> None:
        if not self.dependenciesReady():
            return
        folder = self.ui.finetuneFolderEdit.currentPath
        cases = folder if folder else self.cases
        if not folder:
            check = self.logic.check_cases(cases)
            self.ui.finetuneStatusLabel.text = "\n".join(check.problems) or f"{len(check.labels)} cases are usable."
            if check.problems:
                return
        with slicer.util.tryWithErrorDisplay("Fine-tuning could not start.", waitCursor=True):
            job = self.logic.start_finetune(
                cases, model=self.ui.modelSelector.currentData or None, progress=self.showProgress
            )
            self.startJob(job, "fine-tuning...")

    def onJobFinished(self, job) -> None:
        if isinstance(job.result, Path):
            self.ui.statusLabel.text = self.ui.finetuneStatusLabel.text = f"New model version: {job.result}"
            self.refreshModels()
            return
        self.result = job.result
        self.ui.lesionTableView.setMRMLTableNode(self.result.table)
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, fit=True)
        self.ui.statusLabel.text = f"{len(mrml.table_rows(self.result.table))} lesions found"

    def onLesionSelected(self) -> None:
        rows = self.ui.lesionTableView.selectedMRMLTableRowIndexes() if self.result else []
        if rows:
            position = mrml.lesion_centre_ras(self.result.table, rows[0])
            slicer.modules.markups.logic().JumpSlicesToLocation(*position, True)

    def onEdit(self) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(self.result.segmentation)
        editor.setSourceVolumeNode(self._parameterNode.inputVolume)

    def onAddCase(self) -> None:
        volume, segmentation = self.ui.caseVolumeSelector.currentNode(), self.ui.caseSegmentationSelector.currentNode()
        if volume and segmentation:
            self.cases.append((volume, segmentation))
            self.ui.caseList.addItem(f"{volume.GetName()} + {segmentation.GetName()}")

    def onImportModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "Model folder (card.json + weights)")
        if not folder:
            return
        from livertumor.models import import_model

        with slicer.util.tryWithErrorDisplay("The model could not be imported.", waitCursor=True):
            target = import_model(folder)
            self.refreshModels()
            self.ui.statusLabel.text = f"Imported into {target}"


class LiverTumorCurriculumTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test): the phantom sample data and the demo model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_phantom_with_demo_model()

    def test_segment_phantom_with_demo_model(self):
        self.delayDisplay("Loading the phantom sample data")
        volume = slicer.util.loadVolume(str(SAMPLE_FILE))
        logic = LiverTumorCurriculumLogic()
        segmentation = logic.segment(volume, device="cpu", quality="fast")
        tumor = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Liver tumor")
        self.assertTrue(tumor)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, tumor, volume)
        self.assertEqual(mask.shape, slicer.util.arrayFromVolume(volume).shape)
        self.assertTrue(os.path.isfile(str(SAMPLE_FILE)))
        self.delayDisplay("Segmented the phantom")
