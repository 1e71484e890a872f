"""What both module widgets share: parameter-node binding and a background job polled from a timer,
with progress, Cancel and error reporting. Imports Qt and the Slicer application, so only the widgets
import it (the Logic modules of this package do not)."""

from __future__ import annotations

import qt
import slicer
import vtk

from . import dependencies


class JobWidgetMixin:
    """Mixed into a ScriptedLoadableModuleWidget (with VTKObservationMixin) whose .ui has
    ``progressBar``, ``statusLabel`` and ``cancelButton``. Subclasses set ``parameterLogic`` and
    implement ``updateButtons`` and ``onJobFinished(job)``."""

    def initJobs(self) -> None:
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onPoll)

    def connectScene(self) -> None:
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)

    def cleanup(self) -> None:
        self.onCancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.parameterLogic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def dependenciesReady(self) -> bool:
        """Ask before installing what the library needs (on the main thread)."""
        return dependencies.ensure(lambda message: slicer.util.confirmOkCancelDisplay(message))

    def startJob(self, job, message: str) -> None:
        self.job = job
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self.timer.start()
        self.updateButtons()

    def showProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = message

    def onPoll(self) -> None:
        if self.job is None or not self.job.poll():
            return
        self.timer.stop()
        job, self.job = self.job, None
        if job.error is not None:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = str(job.error)
            if not job.process.cancelled:
                slicer.util.errorDisplay(str(job.error))
        else:
            self.ui.progressBar.value = 100
            self.onJobFinished(job)
        self.updateButtons()

    def onCancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.onPoll()
            self.ui.statusLabel.text = "Cancelled; the scene is as it was."
