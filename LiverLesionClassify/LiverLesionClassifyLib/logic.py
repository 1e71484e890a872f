"""LiverLesionClassifyLogic: classify each lesion of a segmentation as cyst, hemangioma or metastasis.

Console contract (blocking)::

    table = LiverLesionClassifyLogic().classify(volumeNode, segmentationNode, model=None)

Lesions are the 26-connected components of the segmentation's lesion segments (names like "Liver
tumor", "lesion", "metastasis", ...). After the run each lesion is one segment named by its class, with
the class's terminology and colour: a lesion segment with one component is renamed in place, one with
several components is split into one segment per component (the voxels are kept exactly). A table node
holds the class, the probabilities and the measurements; :meth:`set_class` overrides a class, and
:meth:`export` writes JSON and CSV. The work runs out of process; a failed or cancelled run leaves the
scene as it was.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from livertumor.errors import LiverTumorError
from LiverTumorAICommon import mrml
from LiverTumorAICommon.jobs import LIVER, TUMOUR, TUMOUR_WORDS, Job, Progress, SceneLogic, progress_events
from LiverTumorAICommon.process import LibraryProcess

SEGMENT_ATTRIBUTE = "LiverTumorAI.lesionId"
#: Node reference from a lesion class table to the segmentation whose segments it names.
SEGMENTATION_REFERENCE_ROLE = "LiverTumorAI.segmentation"


class LiverLesionClassifyLogic(SceneLogic):
    """Per-lesion classification on MRML nodes (see the module docstring)."""

    @staticmethod
    def lesion_segment_ids(segmentation_node) -> list[str]:
        """Segments holding lesions: named like a tumour, or classified by this module before."""
        segmentation = segmentation_node.GetSegmentation()
        ids = []
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            name = segmentation.GetSegment(segment_id).GetName().lower()
            if any(word in name for word in TUMOUR_WORDS):
                ids.append(segment_id)
        return ids

    def start_classify(
        self,
        volume_node,
        segmentation_node,
        model: str | None = None,
        device: str = "auto",
        progress: Progress | None = None,
    ) -> Job:
        """Start classifying; the job's result is the new table node."""
        from livertumor.io import write_volume  # SimpleITK: imported on use, not when Slicer loads the module

        ct = mrml.volume_from_node(volume_node)
        segment_ids = self.lesion_segment_ids(segmentation_node)
        if not segment_ids:
            raise LiverTumorError(
                f"{segmentation_node.GetName()!r} has no lesion segment (a segment named like 'Liver tumor', "
                "'lesion' or 'metastasis')"
            )
        label = np.zeros(ct.shape, np.uint8)
        segmentation = segmentation_node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            if segment_id not in segment_ids and "liver" in segmentation.GetSegment(segment_id).GetName().lower():
                label[mrml.segment_mask(segmentation_node, segment_id, volume_node)] = LIVER
        masks = {
            segment_id: mrml.segment_mask(segmentation_node, segment_id, volume_node) for segment_id in segment_ids
        }
        for mask in masks.values():
            label[mask] = TUMOUR
        if not (label == TUMOUR).any():
            raise LiverTumorError(
                f"the lesion segments of {segmentation_node.GetName()!r} are empty: nothing to classify"
            )
        workdir = Path(tempfile.mkdtemp(prefix="livertumor-classify-"))
        write_volume(ct, workdir / "ct.nrrd")
        write_volume(ct.with_array(label), workdir / "lesions.nrrd")
        arguments = [
            "classify",
            workdir / "ct.nrrd",
            "--lesions",
            workdir / "lesions.nrrd",
            "-o",
            workdir / "report.json",
        ]
        # every component of the user's segments is a lesion to them: no size floor here
        arguments += ["--min-lesion-mm", "0", "--device", device, "--progress", "json"]
        arguments += ["--model", model] if model else []
        process = LibraryProcess(arguments, progress_events(progress), self.python).start()

        def finish(_: LibraryProcess) -> Any:
            report = json.loads((workdir / "report.json").read_text())
            return self._apply(volume_node, segmentation_node, masks, label == TUMOUR, report)

        return Job(process, finish, workdir)

    def classify(self, volume_node, segmentation_node, model: str | None = None, device: str = "auto") -> Any:
        """Classify every lesion (blocking); returns the table node."""
        return self.start_classify(volume_node, segmentation_node, model, device).wait()

    def _apply(self, volume_node, segmentation_node, masks: dict[str, np.ndarray], tumour: np.ndarray, report: dict):
        """One classified segment per lesion component; the table of classes and measurements."""
        from livertumor.lesions.measure import lesion_components
        from livertumor.phantom import LESION_CLASSES

        ids, _ = lesion_components(tumour)
        lesions = {entry["id"]: entry for entry in report["lesions"]}
        segmentation = segmentation_node.GetSegmentation()
        terms = mrml.load_terms()
        rows: dict[str, list] = {"segment": [], "class": [], **{f"p({name})": [] for name in LESION_CLASSES}}
        measurements = []
        for segment_id, mask in masks.items():
            components = np.unique(ids[mask])
            components = components[components > 0]
            split = len(components) > 1
            for component in components:
                entry = lesions[int(component)]
                if split:
                    target = mrml.add_segment(segmentation_node, volume_node, ids == component, terms[entry["class"]])
                else:
                    target = segment_id
                    mrml.apply_term(segmentation.GetSegment(target), terms[entry["class"]])
                segmentation.GetSegment(target).SetTag(SEGMENT_ATTRIBUTE, str(component))
                rows["segment"].append(target)
                rows["class"].append(entry["class"])
                for name in LESION_CLASSES:
                    rows[f"p({name})"].append(float(entry["probabilities"].get(name, 0.0)))
                measurements.append(entry)
            if split:
                segmentation.RemoveSegment(segment_id)
        _number_segments(segmentation_node, rows["segment"])
        name = f"{volume_node.GetName()} lesion classes"
        table = mrml.lesion_table(self.scene, measurements, name, volume_node, rows)
        table.SetNodeReferenceID(SEGMENTATION_REFERENCE_ROLE, segmentation_node.GetID())
        return table

    def set_class(self, table_node, row: int, class_name: str) -> None:
        """Override a lesion's class: its segment's name, terminology and colour (in the segmentation the
        table was made for), and the table row."""
        from livertumor.phantom import LESION_CLASSES

        if class_name not in LESION_CLASSES:
            raise LiverTumorError(f"unknown class {class_name!r}; choose one of {', '.join(LESION_CLASSES)}")
        segmentation_node = table_node.GetNodeReference(SEGMENTATION_REFERENCE_ROLE)
        if segmentation_node is None:
            raise LiverTumorError(f"{table_node.GetName()!r} is not linked to a segmentation (or it was deleted)")
        rows = mrml.table_rows(table_node)
        if not 0 <= row < len(rows):
            raise LiverTumorError(f"{table_node.GetName()!r} has no row {row + 1}")
        table = table_node.GetTable()
        segment_id = rows[row]["segment"]
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise LiverTumorError(f"segment {segment_id!r} of row {row + 1} no longer exists")
        mrml.apply_term(segment, mrml.load_terms()[class_name])
        _number_segments(segmentation_node, [r["segment"] for r in rows])
        column = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())].index("class")
        table.SetValue(row, column, class_name)
        table_node.Modified()

    @staticmethod
    def export(
        table_node, json_path: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None
    ) -> None:
        """Write the lesion table as JSON (a list of rows) and/or CSV, atomically."""
        from livertumor.io import write_json, write_text_atomic

        rows = mrml.table_rows(table_node)
        if json_path:
            write_json(Path(json_path), {"lesions": rows})
        if csv_path and rows:
            text = io.StringIO()
            writer = csv.DictWriter(text, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            write_text_atomic(csv_path, text.getvalue())


def _number_segments(segmentation_node, segment_ids: list[str]) -> None:
    """Classified segments are named "<class name> <n>", numbered per class in table order."""
    segmentation = segmentation_node.GetSegmentation()
    counts: dict[str, int] = {}
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        base = segment.GetName().rstrip("0123456789 ")
        counts[base] = counts.get(base, 0) + 1
        segment.SetName(f"{base} {counts[base]}")
