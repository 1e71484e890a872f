"""Running the library out of process: ``PythonSlicer -m livertumor ... --progress json``.

The work (PyTorch) runs in its own process so Slicer's GUI never freezes and a Cancel can end it at
once: the process starts in a new process group (session) and Cancel ends the whole group, workers
included. Events (progress, results) are the JSON lines that start with a random per-run prefix the
child is given in ``LIVERTUMOR_EVENT_PREFIX``; every other line is log text, so nothing a file, a card or
a message prints can pose as an event. A reader thread collects lines; :meth:`LibraryProcess.poll`
hands them out on the caller's thread (Slicer's main thread, from a QTimer), so callbacks may touch
the scene.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from livertumor.cli import EVENT_PREFIX_VARIABLE
from livertumor.errors import LiverTumorError

Event = Callable[[dict], None]


class ProcessFailed(LiverTumorError):
    """The library process ended with an error; the message is its last error line."""


class Cancelled(LiverTumorError):
    """The user cancelled the run."""


def library_python() -> str:
    """The Python that runs the library: ``$LIVERTUMOR_PYTHON``, Slicer's ``PythonSlicer`` beside the
    running executable or on PATH, else this Python."""
    override = os.environ.get("LIVERTUMOR_PYTHON")
    if override:
        return override
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    if sys.executable:  # empty when the host cannot tell (embedded interpreters)
        beside = Path(sys.executable).with_name(name)
        if beside.is_file():
            return str(beside)
    found = shutil.which(name) or sys.executable
    if not found:
        raise LiverTumorError(
            "no Python to run the library: set LIVERTUMOR_PYTHON to PythonSlicer or a Python with livertumor"
        )
    return found


def library_environment() -> dict[str, str]:
    """This environment with the folder holding ``livertumor`` first on PYTHONPATH (the extension
    installs it next to the scripted modules, which PythonSlicer does not search by itself)."""
    import livertumor

    root = str(Path(livertumor.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The child's messages hold file names in any script; the reader decodes UTF-8 whatever the locale.
    env["PYTHONIOENCODING"] = "utf-8"
    return env


class LibraryProcess:
    """One ``python -m livertumor ARGS`` run with JSON progress, cancellable."""

    def __init__(self, arguments: Sequence[str], on_event: Event | None = None, python: str | None = None) -> None:
        self.arguments = [str(a) for a in arguments]
        self.event_prefix = f"@livertumor-{secrets.token_hex(8)} "
        self.on_event = on_event or (lambda event: None)
        self.python = python or library_python()
        self.log: list[str] = []
        self.events: list[dict] = []
        self.cancelled = False
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "livertumor", *self.arguments]

    def start(self) -> LibraryProcess:
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env={**library_environment(), EVENT_PREFIX_VARIABLE: self.event_prefix},
            **kwargs,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        """Move output lines to the queue until the pipe closes. Whatever goes wrong while reading, the
        pipe is drained (so the child never blocks on a full pipe) and the end marker is queued (so
        ``poll()`` finishes)."""
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                self._lines.put(line.rstrip("\n"))
        except Exception as error:  # never let the reader die silently: say why and keep draining
            self._lines.put(f"(output unreadable: {error})")
            try:
                while self._process.stdout.buffer.read(65536):
                    pass
            except Exception:
                pass
        finally:
            self._lines.put(None)

    def poll(self) -> bool:
        """Hand out the lines that arrived; True once the process has ended and every line is read."""
        finished = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                finished = True
                break
            self._handle(line)
        return finished and self._process is not None and self._process.wait() is not None

    def _handle(self, line: str) -> None:
        if line.startswith(self.event_prefix):
            try:
                event = json.loads(line[len(self.event_prefix) :])
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                self.events.append(event)
                self.on_event(event)
                return
        self.log.append(line)

    def wait(self, poll_seconds: float = 0.05) -> None:
        """Block until the run ends (handing out events meanwhile); raise if it failed or was cancelled."""
        while not self.poll():
            time.sleep(poll_seconds)
        self.check()

    def check(self) -> None:
        """Raise :class:`Cancelled` or :class:`ProcessFailed` for a run that did not succeed."""
        if self.cancelled:
            raise Cancelled("cancelled by the user")
        code = self._process.returncode if self._process else None
        if code != 0:
            # The library's own errors are one "livertumor CMD: error: ..." line, possibly with a list below.
            first = next((i for i, line in enumerate(self.log) if "error:" in line), None)
            detail = "\n".join(self.log[first:]) if first is not None else "\n".join(self.log[-5:])
            raise ProcessFailed(
                f"livertumor {self.arguments[0]} failed (exit {code}): {detail.strip() or '(no output)'}"
            )

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """End the whole process tree: terminate, then kill what is left after ``grace_seconds``."""
        self.cancelled = True
        process = self._process
        if process is not None and process.poll() is None:
            self._end_tree(process, grace_seconds)
        if self._reader is not None:
            # The pipe closes with the tree: the reader queues the last lines and its end marker, so the
            # next poll() reports the run as ended (on a loaded machine the thread may otherwise lag).
            self._reader.join(grace_seconds)

    @staticmethod
    def _end_tree(process: subprocess.Popen, grace_seconds: float) -> None:
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True)
            return
        group = os.getpgid(process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(group, signal.SIGKILL)  # workers that outlived their parent
        except ProcessLookupError:
            pass
        process.wait()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None
