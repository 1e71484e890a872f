"""LiverTumorCurriculumLogic: segment liver tumours in a CT node, fine-tune on annotated cases.

Console contract (blocking)::

    logic = LiverTumorCurriculumLogic()
    segmentation = logic.segment(volumeNode, model=None, device="auto")
    new_model = logic.finetune([(volumeNode, segmentationNode), ...], model=None, out=None)

The GUI uses the ``start_*`` variants, which return a :class:`Job` to poll from a timer and to cancel.
All heavy work runs in ``PythonSlicer -m livertumor ...``; the scene changes only when a run has
succeeded, so a failed or cancelled run leaves it as it was. No dialogs, no application globals but the
default scene (``slicer.mrmlScene``) when none is given.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livertumor.errors import LiverTumorError
from livertumor.paths import user_models_dir
from LiverTumorAICommon import mrml
from LiverTumorAICommon.jobs import LIVER, TUMOUR, TUMOUR_WORDS, Job, Progress, SceneLogic, progress_events
from LiverTumorAICommon.process import LibraryProcess

#: Speed/quality choice -> sliding-window plan (``livertumor segment --overlap/--stretch``; measured in
#: docs/results/inference.md: fast is about 1.8x faster on the paper network, quality the published figures).
WINDOW_PLANS = {"fast": {"overlap": 0.25, "stretch": 0.125}, "quality": {"overlap": 0.5, "stretch": 0.0}}


@dataclass
class SegmentationResult:
    """The nodes a segmentation run adds (segmentation, lesion table, optionally the probability) and
    the CT they belong to."""

    volume: Any
    segmentation: Any
    table: Any
    probability: Any = None
    #: The library's cautions about this result (e.g. a CT too thin for the model), one sentence each.
    cautions: list[str] = field(default_factory=list)


@dataclass
class FinetuneCase:
    """A fine-tuning case from the scene: a CT node and a segmentation node with a tumour segment."""

    volume: Any
    segmentation: Any
    name: str = ""


@dataclass
class CaseCheck:
    """The result of checking fine-tuning cases: problems (one line each) and the usable label maps."""

    problems: list[str] = field(default_factory=list)
    labels: dict[str, tuple[Any, np.ndarray]] = field(default_factory=dict)


class LiverTumorCurriculumLogic(SceneLogic):
    """Liver tumour segmentation and fine-tuning on MRML nodes (see the module docstring)."""

    # ---- segmentation -------------------------------------------------------------------------------
    def start_segment(
        self,
        volume_node,
        model: str | None = None,
        device: str = "auto",
        quality: str = "quality",
        probabilities: bool = False,
        progress: Progress | None = None,
        backend: str = "auto",
    ) -> Job:
        """Start segmenting ``volume_node``; the job's result is a :class:`SegmentationResult`.
        ``backend``: ``livertumor segment --backend`` (auto: OpenVINO on the CPU where installed)."""
        if quality not in WINDOW_PLANS:
            raise ValueError(f"quality is one of {', '.join(WINDOW_PLANS)}, not {quality!r}")
        from livertumor.io import write_volume  # SimpleITK: imported on use, not when Slicer loads the module

        ct = mrml.volume_from_node(volume_node)
        workdir = Path(tempfile.mkdtemp(prefix="livertumor-segment-"))
        write_volume(ct, workdir / "ct.nrrd")
        arguments = ["segment", workdir / "ct.nrrd", "-o", workdir, "--device", device, "--format", ".nrrd"]
        plan = WINDOW_PLANS[quality]
        arguments += ["--overlap", plan["overlap"], "--stretch", plan["stretch"]]
        arguments += ["--progress", "json", "--backend", backend]
        arguments += ["--model", model] if model else []
        arguments += ["--probabilities"] if probabilities else []
        process = LibraryProcess(arguments, progress_events(progress), self.python).start()

        def finish(done: LibraryProcess) -> SegmentationResult:
            result = self._add_result(volume_node, ct.grid, workdir, probabilities)
            result.cautions = [str(e["message"]) for e in done.events if e.get("event") == "caution"]
            return result

        return Job(process, finish, workdir)

    def segment(self, volume_node, model: str | None = None, device: str = "auto", **options) -> Any:
        """Segment liver tumours in ``volume_node`` (blocking); returns the new segmentation node."""
        return self.start_segment(volume_node, model, device, **options).wait().segmentation

    def _add_result(self, volume_node, grid, workdir: Path, probabilities: bool) -> SegmentationResult:
        from livertumor.io import read_image, read_label
        from livertumor.lesions.measure import measure_lesions

        labels = read_label(workdir / "ct_seg.nrrd", reference=grid)
        tumour = labels.array == TUMOUR
        masks = []
        if (labels.array == LIVER).any():
            masks.append(("liver", labels.array >= LIVER))
        masks.append(("tumor", tumour))
        name = f"{volume_node.GetName()} liver tumors"
        segmentation = mrml.add_segmentation_node(self.scene, volume_node, masks, name)
        _, measurements = measure_lesions(labels, label=TUMOUR)
        lesions = [m.to_json() for m in measurements]
        table = mrml.lesion_table(self.scene, lesions, f"{volume_node.GetName()} lesions", volume_node)
        probability = None
        if probabilities:
            volume = read_image(workdir / "ct_tumour_probability.nrrd")
            probability = mrml.add_volume_node(
                self.scene, volume, f"{volume_node.GetName()} tumor probability", like=volume_node
            )
        return SegmentationResult(volume_node, segmentation, table, probability)

    # ---- fine-tuning --------------------------------------------------------------------------------
    def check_cases(self, cases: Sequence[FinetuneCase | tuple]) -> CaseCheck:
        """Every problem of scene cases, one line each (not a CT, segmentation on another grid, no
        tumour), and the 0/1/2 label maps of the usable ones."""
        check = CaseCheck()
        if not cases:
            check.problems.append("no cases given")
        for number, case in enumerate(cases):
            case = case if isinstance(case, FinetuneCase) else FinetuneCase(*case)
            name = case.name or (case.volume.GetName() if case.volume is not None else f"case {number + 1}")
            if name in check.labels:  # two cases on one CT, or same-named nodes: keep both
                name = f"{name} ({number + 1})"
            try:
                if case.volume is None or case.segmentation is None:
                    raise LiverTumorError("needs both a CT volume and a segmentation")
                ct = mrml.volume_from_node(case.volume)
                label = np.zeros(ct.shape, np.uint8)
                segmentation = case.segmentation.GetSegmentation()
                for index in range(segmentation.GetNumberOfSegments()):
                    segment_id = segmentation.GetNthSegmentID(index)
                    words = segmentation.GetSegment(segment_id).GetName().lower()
                    if "liver" in words and not any(w in words for w in TUMOUR_WORDS):
                        label[mrml.segment_mask(case.segmentation, segment_id, case.volume) & (label == 0)] = LIVER
                for index in range(segmentation.GetNumberOfSegments()):
                    segment_id = segmentation.GetNthSegmentID(index)
                    if any(w in segmentation.GetSegment(segment_id).GetName().lower() for w in TUMOUR_WORDS):
                        label[mrml.segment_mask(case.segmentation, segment_id, case.volume)] = TUMOUR
                if not (label == TUMOUR).any():
                    raise LiverTumorError(
                        "no tumour: it needs a non-empty segment named like 'Liver tumor' (or lesion, metastasis, "
                        "cyst, hemangioma)"
                    )
                check.labels[name] = (ct, label)
            except LiverTumorError as error:
                check.problems.append(f"{name}: {error}")
        return check

    def start_finetune(
        self,
        cases: Sequence[FinetuneCase | tuple] | str | os.PathLike,
        model: str | None = None,
        out: str | os.PathLike | None = None,
        epochs: int | None = None,
        iterations: int | None = None,
        device: str = "auto",
        progress: Progress | None = None,
        preset: str = "quick",
    ) -> Job:
        """Start fine-tuning ``model`` (default: the shipped demo model) on scene cases or a folder with
        ``preset`` (``quick``: minutes on a CPU; ``full``: the model's own budget); the job's result is the
        new model folder. Scene cases are checked first and every problem is raised together."""
        from livertumor.io import write_volume

        workdir = Path(tempfile.mkdtemp(prefix="livertumor-finetune-"))
        if isinstance(cases, (str, os.PathLike)):
            data = Path(cases)
        else:
            check = self.check_cases(cases)
            if check.problems:
                shutil.rmtree(workdir, ignore_errors=True)
                raise LiverTumorError("the fine-tuning cases cannot be used:\n  " + "\n  ".join(check.problems))
            data = workdir / "cases"
            for number, (name, (ct, label)) in enumerate(check.labels.items()):
                # the node's name, so the new model's card lists the cases it learnt from
                stem = f"{number:03d}-" + "".join(c if c.isalnum() or c in "-." else "_" for c in name)
                write_volume(ct, data / f"{stem}.nrrd")
                write_volume(ct.with_array(label), data / f"{stem}_seg.nrrd")
        arguments = ["finetune", "--data", data, "--progress", "json", "--device", device, "--preset", preset]
        arguments += (["--model", model] if model else []) + (["--out", out] if out else [])
        arguments += (["--epochs", epochs] if epochs else []) + (["--iterations", iterations] if iterations else [])
        process = LibraryProcess(arguments, progress_events(progress), self.python).start()

        def finish(done: LibraryProcess) -> Path:
            saved = [e for e in done.events if e.get("event") == "saved"]
            if not saved:
                raise LiverTumorError("fine-tuning ended without saving a model")
            model = Path(str(saved[-1]["model"]))
            # Only where this run was told to write: the folder asked for, or a new one among the user's models.
            expected = Path(out).resolve() if out else None
            inside = model.resolve() == expected if expected else model.resolve().parent == user_models_dir().resolve()
            if not inside or not (model / "card.json").is_file():
                raise LiverTumorError(f"fine-tuning reported a model at {model}, not where it was asked to write one")
            return model

        return Job(process, finish, workdir)

    def finetune(self, cases, model: str | None = None, out: str | os.PathLike | None = None, **options) -> Path:
        """Fine-tune (blocking); returns the new model version's folder. The parent model is untouched."""
        return self.start_finetune(cases, model, out, **options).wait()
