"""Background jobs of the modules and the state a module widget shows for them, without Qt.

A :class:`Job` is one library process plus what to do with its result. A :class:`JobController` is the
whole life of a module's job as the GUI sees it (start, progress, finish, failure, cancel) and keeps
running when the user leaves the module or the parameter node goes away: the widget only forwards its
timer and Cancel button to it and draws the :class:`JobStatus` it is handed, so every decision here is
tested without Qt.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .process import LibraryProcess

Progress = Callable[[float, str], None]
LIVER, TUMOUR = 1, 2
#: Segment names (lower case) read as tumour or liver when a user's segmentation is used for training.
TUMOUR_WORDS = ("tumor", "tumour", "lesion", "metasta", "cyst", "hemangioma", "neoplasm", "cancer", "hcc")


class Job:
    """A running library process and what to do with its result: ``poll()`` from a timer until it
    returns True, then read ``result`` (or ``error``); ``cancel()`` ends the process tree."""

    def __init__(self, process: LibraryProcess, finish: Callable[[LibraryProcess], Any], workdir: Path) -> None:
        self.process, self._finish, self.workdir = process, finish, workdir
        self.result: Any = None
        self.error: Exception | None = None
        self.done = False

    @property
    def cancelled(self) -> bool:
        return self.process.cancelled

    def poll(self) -> bool:
        if self.done:
            return True
        if not self.process.poll():
            return False
        try:
            self.process.check()
            self.result = self._finish(self.process)
        except Exception as error:  # reported to the caller through .error / wait()
            self.error = error
        finally:
            self.done = True
            shutil.rmtree(self.workdir, ignore_errors=True)
        return True

    def cancel(self) -> None:
        self.process.cancel()
        self.poll()

    def wait(self, poll_seconds: float = 0.05) -> Any:
        while not self.poll():
            time.sleep(poll_seconds)
        if self.error is not None:
            raise self.error
        return self.result


def progress_events(progress: Progress | None) -> Callable[[dict], None]:
    """Turn the library's JSON events into ``progress(fraction, message)`` calls."""

    def on_event(event: dict) -> None:
        if progress is None:
            return
        if "progress" in event:
            progress(float(event["progress"]), str(event.get("message", "")))
        elif event.get("event") == "iteration":
            fraction = event["done_iterations"] / max(1, event["total_iterations"])
            minutes = max(1, round(event["eta_s"] / 60))
            progress(
                fraction,
                f"stage {event['stage'] + 1} ({event['kind']}), epoch {event['epoch'] + 1}, ~{minutes} min left",
            )
        elif event.get("event") == "validation-plan":
            progress(0.0, f"validation: {event['note']}")
        elif event.get("event") == "epoch":
            dice = event.get("dg")
            progress(
                event["done"] / max(1, event["total"]),
                f"epoch {event['done']}/{event['total']}: validation Dice {'-' if dice is None else f'{dice:.3f}'}",
            )

    return on_event


@dataclass
class JobStatus:
    """What the widget shows: whether a job runs (buttons), the progress bar and the status line."""

    running: bool = False
    percent: int = 0
    message: str = ""


class JobController:
    """One module's background job as the GUI sees it.

    ``show(status)`` draws the state (called on every change); ``finished(job)`` puts a successful
    result into the scene and returns the status line to show; ``report_error(message)`` shows a
    failure the user did not ask for (not a cancel). An exception from ``finished`` is reported like a
    failed run, so the buttons never stay in the running state. Nothing here needs the module to be
    entered or a parameter node to exist.
    """

    def __init__(
        self,
        show: Callable[[JobStatus], None],
        finished: Callable[[Job], str],
        report_error: Callable[[str], None],
    ) -> None:
        self._show, self._finished, self._report_error = show, finished, report_error
        self.job: Job | None = None
        self.status = JobStatus()

    @property
    def running(self) -> bool:
        return self.job is not None

    def _set(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self._show(self.status)

    def start(self, job: Job, message: str) -> None:
        """Show ``job`` as running; refused while another one runs (one job per module)."""
        if self.job is not None:
            raise RuntimeError("a job is already running; cancel it first")
        self.job = job
        self._set(running=True, percent=0, message=message)

    def progress(self, fraction: float, message: str) -> None:
        """The ``progress`` callback to give the Logic's ``start_*``."""
        self._set(percent=max(0, min(100, round(100 * fraction))), message=message)

    def poll(self) -> bool:
        """Advance the job (from the widget's timer); True while the timer should keep running."""
        if self.job is None:
            return False
        if not self.job.poll():
            return True
        job, self.job = self.job, None
        error: BaseException | None = job.error
        message = ""
        if error is None:
            try:
                message = self._finished(job)
            except Exception as failure:  # a result the scene could not take: a failure, not a hang
                error = failure
        if error is None:
            self._set(running=False, percent=100, message=message)
        elif job.cancelled:
            self._set(running=False, percent=0, message="Cancelled; the scene is as it was.")
        else:
            self._set(running=False, percent=0, message=str(error))
            self._report_error(str(error))
        return False

    def cancel(self) -> None:
        """End the running job, if any (its process tree at once), and show it as cancelled."""
        if self.job is not None:
            self.job.cancel()
            self.poll()


class SceneLogic:
    """A Logic bound to a scene (default: the application's ``slicer.mrmlScene``, looked up when used)
    that runs the library with ``python`` (default: PythonSlicer, see ``process.library_python``)."""

    def __init__(self, scene=None, python: str | None = None) -> None:
        self._scene = scene
        self.python = python

    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene
