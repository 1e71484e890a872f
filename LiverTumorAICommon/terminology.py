"""Registering the extension's terminology with Slicer, so the Segment Editor offers its segment types
and shows their names (without it Slicer 5.6 says "Invalid terminology information")."""

from __future__ import annotations

from livertumor.terminology import TERMINOLOGY_FILE


def register_terminology(terminologies_logic) -> str:
    """Load the extension's ``.term.json`` into Slicer's Terminologies logic (``slicer.modules.
    terminologies.logic()``); returns the context name it is known by. Loading twice is harmless."""
    context = terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    if not context:
        raise RuntimeError(f"Slicer could not load the terminology {TERMINOLOGY_FILE}")
    return context
