"""The extension's segment terminology: names, colours and DICOM/SNOMED codes of liver, tumour and the
three lesion classes, from the one file Slicer loads too (``Resources/Terminology/LiverTumorAI.term.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: The single source of segment names, codes and colours. It lies in Resources/ beside the ``livertumor``
#: package, in the source tree and in the installed extension alike.
TERMINOLOGY_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Terminology" / "LiverTumorAI.term.json"


#: A DICOM code: (coding scheme designator, code value, code meaning).
Code = tuple[str, str, str]


@dataclass(frozen=True)
class SegmentTerm:
    """One entry of the terminology file: segment name, colour, the Slicer terminology string and the
    DICOM codes it is made of (category, type, anatomic region or None)."""

    name: str
    color: tuple[float, float, float]
    terminology: str
    category: Code
    type: Code
    region: Code | None


def _code(entry: dict) -> Code:
    return entry["CodingSchemeDesignator"], entry["CodeValue"], entry["CodeMeaning"]


def load_terms(path: Path = TERMINOLOGY_FILE) -> dict[str, SegmentTerm]:
    """Segment terms by key (``liver``, ``tumor``, ``cyst``, ``hemangioma``, ``metastasis``) from the
    extension's ``.term.json`` (``3dSlicerLabel`` names the segment; ``LiverTumorAIKey`` is our key)."""
    data = json.loads(Path(path).read_text())
    context = data["SegmentationCategoryTypeContextName"]
    terms = {}
    for category in data["SegmentationCodes"]["Category"]:
        category_code = _code(category)
        for entry in category["Type"]:
            type_code = _code(entry)
            region = _code(entry["anatomicRegion"]) if "anatomicRegion" in entry else None
            anatomic_context = "Anatomic codes - DICOM master list" if region else ""
            region_text = "^".join(region or ("", "", ""))
            parts = [context, "^".join(category_code), "^".join(type_code), "^^", anatomic_context, region_text, "^^"]
            string = "~".join(parts)
            color = tuple(c / 255.0 for c in entry["recommendedDisplayRGBValue"])
            terms[entry["LiverTumorAIKey"]] = SegmentTerm(
                entry["3dSlicerLabel"], color, string, category_code, type_code, region
            )
    return terms
