"""LiverLesionClassify: classify each liver lesion of a segmentation as cyst, hemangioma or metastasis.

The widget is thin (a .ui file bound to a parameter node); LiverLesionClassifyLib holds the Logic, and
the ``livertumor`` library runs out of process.
"""

from __future__ import annotations

from typing import Annotated

import qt
import slicer
from LiverLesionClassifyLib import LiverLesionClassifyLogic
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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
from LiverTumorAICommon.widgetbase import JobWidgetMixin


class LiverLesionClassify(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Lesion Classify")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["LiverTumorCurriculum"]
        self.parent.contributors = ["LiverTumorAI contributors"]
        self.parent.helpText = _(
            "Classify each liver lesion (a segment, or each connected component of a tumour segment) as cyst, "
            "hemangioma or metastasis with a 2D U-Net with SE-ResNet encoder (joint pixel-wise classification, "
            "majority vote). Research use only, not for diagnosis."
        )
        self.parent.acknowledgementText = _(
            "Method: Heker and Greenspan, joint liver lesion segmentation and classification."
        )


@parameterNodeWrapper
class LiverLesionClassifyParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


class LiverLesionClassifyParameterLogic(ScriptedLoadableModuleLogic):
    """Only the parameter node; the work is LiverLesionClassifyLogic's."""

    def __init__(self) -> None:
        super().__init__()
        self.moduleName = "LiverLesionClassify"  # not the class name minus "Logic"

    def getParameterNode(self):
        return LiverLesionClassifyParameterNode(super().getParameterNode())


class LiverLesionClassifyWidget(JobWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    modelKind = "lesion"
    libPackages = ("LiverTumorAICommon", "LiverLesionClassifyLib")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initJobs()
        self.table = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverLesionClassify.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverLesionClassifyLogic()
        self.parameterLogic = LiverLesionClassifyParameterLogic()
        self.connectScene()
        self.ui.classifyButton.connect("clicked(bool)", self.onClassify)
        self.ui.overrideButton.connect("clicked(bool)", self.onOverride)
        self.ui.exportJsonButton.connect("clicked(bool)", lambda: self.onExport("json"))
        self.ui.exportCsvButton.connect("clicked(bool)", lambda: self.onExport("csv"))
        self.ui.classTableView.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.refreshModels()
        self.initializeParameterNode()

    def updateButtons(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        ready = bool(parameters and parameters.inputVolume and parameters.inputSegmentation)
        self.ui.classifyButton.enabled = ready and not self.jobs.running
        self.ui.cancelButton.enabled = self.jobs.running
        for button in (self.ui.overrideButton, self.ui.exportJsonButton, self.ui.exportCsvButton):
            button.enabled = self.table is not None

    def onClassify(self) -> None:
        if not self.dependenciesReady():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Classification could not start."), waitCursor=True):
            job = self.logic.start_classify(
                parameters.inputVolume,
                parameters.inputSegmentation,
                model=self.ui.modelSelector.currentData or None,
                device=parameters.device,
                progress=self.jobs.progress,
            )
            self.startJob(job, _("classifying..."))

    def onJobFinished(self, job) -> str:
        self.table = job.result
        self.ui.classTableView.setMRMLTableNode(self.table)
        return _("{count} lesions classified").format(count=len(mrml.table_rows(self.table)))

    def onOverride(self) -> None:
        view = self.ui.classTableView
        source = [view.sortFilterProxyModel().mapToSource(i).row() for i in view.selectionModel().selectedIndexes()]
        rows = mrml.selected_table_rows(source, self.table)
        if not rows:
            self.ui.statusLabel.text = _("Select a lesion row first.")
            return
        with slicer.util.tryWithErrorDisplay(_("The class could not be set.")):
            self.logic.set_class(self.table, rows[0], self.ui.overrideSelector.currentText)

    def onExport(self, kind: str) -> None:
        path = qt.QFileDialog.getSaveFileName(
            None, _("Export lesion classes ({kind})").format(kind=kind.upper()), "", f"*.{kind}"
        )
        if path:
            with slicer.util.tryWithErrorDisplay(_("Export failed.")):
                self.logic.export(self.table, **{f"{kind}_path": path})


class LiverLesionClassifyTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: segment the phantom sample data with the demo segmenter, classify with the demo
    classifier."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.assertTrue(dependencies.ensure(lambda message: True, dependencies.slicer_installer, self.fail))
        self.test_classify_phantom_lesions()

    def test_classify_phantom_lesions(self):
        from LiverTumorCurriculum import SAMPLE_FILE, SAMPLE_LABELS

        volume = slicer.util.loadVolume(str(SAMPLE_FILE))
        segmentation = slicer.util.loadSegmentation(str(SAMPLE_LABELS))
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
        self.assertIn("Liver tumor", names)
        table = LiverLesionClassifyLogic().classify(volume, segmentation, device="cpu")
        rows = mrml.table_rows(table)
        self.assertTrue(rows)
        self.assertTrue(all(row["class"] in ("cyst", "hemangioma", "metastasis") for row in rows))
