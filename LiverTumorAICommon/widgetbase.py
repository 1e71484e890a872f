"""What both module widgets share: parameter-node binding, the job timer and Cancel, dependency
dialogs. The only part of this package that imports Qt and the Slicer application; every decision it
forwards is made in Qt-free code (:class:`.jobs.JobController`, :mod:`.dependencies`, :mod:`.mrml`)."""

from __future__ import annotations

import importlib
import sys

import qt
import slicer
import vtk

from . import dependencies
from .jobs import JobController, JobStatus


class JobWidgetMixin:
    """Mixed into a ScriptedLoadableModuleWidget (with VTKObservationMixin) whose .ui has
    ``progressBar``, ``statusLabel``, ``cancelButton`` and ``modelSelector``. Subclasses set
    ``parameterLogic`` and ``modelKind`` and implement ``updateButtons`` and ``onJobFinished(job)``."""

    modelKind = "segmentation"
    #: Packages Developer mode's Reload reloads with the module file.
    libPackages: tuple[str, ...] = ("LiverTumorAICommon",)

    def initJobs(self) -> None:
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.jobs = JobController(self.showJobStatus, self.onJobFinished, slicer.util.errorDisplay)
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onPoll)

    def connectScene(self) -> None:
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)

    def cleanup(self) -> None:
        self.onCancel()
        self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # A running job goes on (the timer keeps polling) and finishes without the parameter node.
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

    def refreshModels(self) -> None:
        self.ui.modelSelector.clear()
        for label, path in dependencies.model_choices(self.modelKind):
            self.ui.modelSelector.addItem(label, path)

    def dependenciesReady(self) -> bool:
        """Ask before installing what the library needs (on the main thread); refresh the model list
        once the packages are there (it shows only the default until then)."""
        before = dependencies.missing()
        ready = dependencies.ensure(
            slicer.util.confirmOkCancelDisplay, dependencies.slicer_installer, slicer.util.errorDisplay
        )
        if ready and before:
            self.refreshModels()
        return ready

    def startJob(self, job, message: str) -> None:
        self.jobs.start(job, message)
        self.timer.start()

    def showJobStatus(self, status: JobStatus) -> None:
        self.ui.progressBar.value = status.percent
        self.ui.statusLabel.text = status.message
        self.updateButtons()

    def onPoll(self) -> None:
        if not self.jobs.poll():
            self.timer.stop()

    def onCancel(self) -> None:
        self.jobs.cancel()

    def onReload(self) -> None:
        """Reload every loaded submodule of ``libPackages`` (leaves first), then the module itself."""
        names = [n for n in list(sys.modules) if n.split(".")[0] in self.libPackages]
        for name in sorted(names, key=lambda n: -n.count(".")):
            importlib.reload(sys.modules[name])
        super().onReload()
