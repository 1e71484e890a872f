"""The extension's segment terminology: names, colours and DICOM/SNOMED codes of liver, tumour and the
three lesion classes, from the one file Slicer loads too (``Resources/Terminology/LiverTumorAI.term.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: The single source of segment names, codes and colours. It lies in Resources/ beside the ``livertumor``
#: package, in the source tree and in the installed extension alike.
TERMINOLOGY_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Terminology" / "LiverTumorAI.term.json"


@dataclass(frozen=True)
class SegmentTerm:
    """One entry of the terminology file: segment name, colour and the Slicer terminology string."""

    name: str
    color: tuple[float, float, float]
    terminology: str


def load_terms(path: Path = TERMINOLOGY_FILE) -> dict[str, SegmentTerm]:
    """Segment terms by key (``liver``, ``tumor``, ``cyst``, ``hemangioma``, ``metastasis``) from the
    extension's ``.term.json`` (``3dSlicerLabel`` names the segment; ``LiverTumorAIKey`` is our key)."""
    data = json.loads(Path(path).read_text())
    context = data["SegmentationCategoryTypeContextName"]
    terms = {}
    for category in data["SegmentationCodes"]["Category"]:
        category_code = f"{category['CodingSchemeDesignator']}^{category['CodeValue']}^{category['CodeMeaning']}"
        for entry in category["Type"]:
            type_code = f"{entry['CodingSchemeDesignator']}^{entry['CodeValue']}^{entry['CodeMeaning']}"
            region = entry.get("anatomicRegion", {})
            region_code = (
                f"{region['CodingSchemeDesignator']}^{region['CodeValue']}^{region['CodeMeaning']}" if region else "^^"
            )
            anatomic_context = "Anatomic codes - DICOM master list" if region else ""
            string = f"{context}~{category_code}~{type_code}~^^~{anatomic_context}~{region_code}~^^"
            color = tuple(c / 255.0 for c in entry["recommendedDisplayRGBValue"])
            terms[entry["LiverTumorAIKey"]] = SegmentTerm(entry["3dSlicerLabel"], color, string)
    return terms
