"""LiverTumorCurriculum: liver tumour segmentation with a three-stage curriculum 3D residual U-Net.

The widget is thin: a .ui file bound to a parameter node, a timer that polls the background job, and
the dialogs. All the work is in LiverTumorCurriculumLib (usable from the Python console and batch
scripts) and the ``livertumor`` library, which runs out of process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated

import qt
import slicer
from LiverTumorCurriculumLib import LiverTumorCurriculumLogic
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LiverTumorAICommon import dependencies, mrml
from LiverTumorAICommon.terminology import register_terminology
from LiverTumorAICommon.widgetbase import JobWidgetMixin

SAMPLE_DIR = Path(__file__).resolve().parent / "Resources" / "SampleData"
#: The phantom CT of the Sample Data module and its truth (Liver, Liver tumor segments).
SAMPLE_FILE = SAMPLE_DIR / "LiverTumorPhantom.nrrd"
SAMPLE_LABELS = SAMPLE_DIR / "LiverTumorPhantom.seg.nrrd"


class LiverTumorCurriculum(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Curriculum")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorAI contributors"]
        self.parent.helpText = _(
            "Segment liver tumours directly on a CT with a 3D residual U-Net trained by three-stage curriculum "
            "learning (whole volumes, tumour patches, whole volumes), and fine-tune it on your own annotated cases. "
            "Research use only, not for diagnosis."
        )
        self.parent.acknowledgementText = _(
            "Method: Li et al., three-stage curriculum learning for liver tumour segmentation."
        )
        slicer.app.connect("startupCompleted()", on_startup_completed)


def on_startup_completed() -> None:
    """The extension's terminology (for both modules) and the phantom sample data."""
    register_terminology(slicer.modules.terminologies.logic())
    register_sample_data()


def register_sample_data() -> None:
    """The phantom CT (synthetic abdomen with liver lesions) in the Sample Data module."""
    import SampleData

    if not SAMPLE_FILE.is_file():
        return
    # The checksum makes Sample Data replace a cached copy of an older phantom.
    digest = hashlib.sha256(SAMPLE_FILE.read_bytes()).hexdigest()
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="LiverTumorAI",
        sampleName="LiverTumorPhantom",
        uris=SAMPLE_FILE.as_uri(),
        fileNames=SAMPLE_FILE.name,
        nodeNames="LiverTumorPhantom",
        thumbnailFileName=str(SAMPLE_FILE.with_suffix(".png")),
        loadFileType="VolumeFile",
        checksums=f"SHA256:{digest}",
    )


@parameterNodeWrapper
class LiverTumorCurriculumParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    quality: Annotated[str, Choice(["quality", "fast"])] = "quality"
    probabilities: bool = False


class LiverTumorCurriculumParameterLogic(ScriptedLoadableModuleLogic):
    """Only the parameter node; the work is LiverTumorCurriculumLogic's."""

    def __init__(self) -> None:
        super().__init__()
        self.moduleName = "LiverTumorCurriculum"  # not the class name minus "Logic"

    def getParameterNode(self):
        return LiverTumorCurriculumParameterNode(super().getParameterNode())


class LiverTumorCurriculumWidget(JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    modelKind = "segmentation"
    libPackages = ("LiverTumorAICommon", "LiverTumorCurriculumLib")

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
        self.ui.lesionTableView.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.addCaseButton.connect("clicked(bool)", self.onAddCase)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.refreshModels()
        self.initializeParameterNode()

    def updateButtons(self, caller=None, event=None) -> None:
        running = self.jobs.running
        has_input = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = has_input and not running
        self.ui.finetuneButton.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.editButton.enabled = self.result is not None

    def onApply(self) -> None:
        if not self.dependenciesReady():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start."), waitCursor=True):
            job = self.logic.start_segment(
                parameters.inputVolume,
                model=self.ui.modelSelector.currentData or None,
                device=parameters.device,
                quality=parameters.quality,
                probabilities=parameters.probabilities,
                progress=self.jobs.progress,
            )
            self.startJob(job, _("segmenting..."))

    def onFinetune(self) -> None:
        if not self.dependenciesReady():
            return
        folder = self.ui.finetuneFolderEdit.currentPath
        cases = folder if folder else self.cases
        if not folder:
            check = self.logic.check_cases(cases)
            self.ui.finetuneStatusLabel.text = "\n".join(check.problems) or _("{count} cases are usable.").format(
                count=len(check.labels)
            )
            if check.problems:
                return
        with slicer.util.tryWithErrorDisplay(_("Fine-tuning could not start."), waitCursor=True):
            job = self.logic.start_finetune(
                cases, model=self.ui.modelSelector.currentData or None, progress=self.jobs.progress
            )
            self.startJob(job, _("fine-tuning..."))

    def onJobFinished(self, job) -> str:
        """Show a finished job's result; the nodes it used come with the job, not the parameter node
        (the user may have left the module meanwhile)."""
        if isinstance(job.result, Path):
            message = _("New model version: {path}").format(path=job.result)
            self.ui.finetuneStatusLabel.text = message
            self.refreshModels()
            return message
        self.result = job.result
        self.ui.lesionTableView.setMRMLTableNode(self.result.table)
        slicer.util.setSliceViewerLayers(background=self.result.volume, fit=True)
        found = _("{count} lesions found").format(count=len(mrml.table_rows(self.result.table)))
        return "\n".join([found] + [_("Caution: {text}").format(text=text) for text in self.result.cautions])

    def onLesionSelected(self) -> None:
        if self.result is None:
            return
        view = self.ui.lesionTableView
        source = [view.sortFilterProxyModel().mapToSource(i).row() for i in view.selectionModel().selectedIndexes()]
        rows = mrml.selected_table_rows(source, self.result.table)
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
        if not self.dependenciesReady():  # importing reads the weights with torch and safetensors
            return
        folder = qt.QFileDialog.getExistingDirectory(None, _("Model folder (card.json + weights)"))
        if not folder:
            return
        from livertumor.models import import_model

        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
            target = import_model(folder)
            self.refreshModels()
            self.ui.statusLabel.text = _("Imported into {path}").format(path=target)


class LiverTumorCurriculumTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test): the phantom sample data and the demo model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        # A fresh Slicer has no torch: install what the library needs (no dialog in a test).
        self.assertTrue(dependencies.ensure(lambda message: True, dependencies.slicer_installer, self.fail))
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
