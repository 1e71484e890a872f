"""Where models live; importable without torch (the Slicer modules ask before torch is installed)."""

from __future__ import annotations

import os
from pathlib import Path


def shipped_models_dir() -> Path:
    """``Resources/Models`` of the extension (``$LIVERTUMOR_RESOURCES/Models`` overrides)."""
    override = os.environ.get("LIVERTUMOR_RESOURCES")
    base = Path(override) if override else Path(__file__).resolve().parents[1] / "Resources"
    return base / "Models"


def user_models_dir() -> Path:
    """The user's own models: ``$LIVERTUMOR_HOME/models``, by default ``~/.livertumor/models``."""
    home = os.environ.get("LIVERTUMOR_HOME")
    return (Path(home) if home else Path.home() / ".livertumor") / "models"
