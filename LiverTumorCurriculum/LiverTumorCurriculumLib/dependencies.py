"""The Python packages the library needs in Slicer, and installing them with the user's consent.

Widgets call :func:`ensure` on the main thread before the first run; the Logic never installs anything.
PyTorch comes from the PyTorch extension's PyTorchUtils where present (it picks the build for the GPU
and CUDA at hand), else from ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

#: Import name -> pip requirement (what the library imports beyond Slicer's own numpy and SimpleITK).
PACKAGES = {
    "torch": "torch",
    "safetensors": "safetensors",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
}


def missing() -> list[str]:
    """The import names not installed in this Python."""
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]


def ensure(confirm: Callable[[str], bool]) -> bool:
    """Install what is missing if ``confirm(message)`` agrees; True when everything is there."""
    needed = missing()
    if not needed:
        return True
    if not confirm(
        "LiverTumorAI needs these Python packages: " + ", ".join(PACKAGES[n] for n in needed) + ".\n"
        "Install them now? (This can take several minutes; PyTorch is large.)"
    ):
        return False
    import slicer

    if "torch" in needed:
        try:
            import PyTorchUtils

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        except ImportError:
            slicer.util.pip_install("torch")
        needed.remove("torch")
    if needed:
        slicer.util.pip_install(" ".join(PACKAGES[n] for n in needed))
    return not missing()
