"""The Python packages the library needs in Slicer, and the flow that installs them with consent.

Everything here but :func:`slicer_installer` is free of Slicer and Qt: widgets call :func:`ensure` on
the main thread before the first run and pass it the dialogs; the Logic never installs anything.
PyTorch comes from the PyTorch extension's PyTorchUtils where present (it picks the build for the GPU
and CUDA at hand), else from ``slicer.util.pip_install``; either way at least :data:`TORCH_MINIMUM`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Import name -> pip requirement (what the library imports beyond Slicer's own numpy and SimpleITK).
PACKAGES = {
    "torch": "torch",
    "safetensors": "safetensors",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
}
#: Import name -> pip requirement of what is offered with the required packages but not needed: OpenVINO
#: runs segmentation about 1.2x faster on the CPU (``livertumor segment --backend auto``).
OPTIONAL_PACKAGES = {"openvino": "openvino"}
#: The oldest PyTorch the library runs on (pyproject.toml's ``torch>=`` says the same; a test checks).
TORCH_MINIMUM = (2, 1)
TORCH_REQUIREMENT = ">=" + ".".join(map(str, TORCH_MINIMUM))


def torch_version() -> tuple[int, ...] | None:
    """The installed PyTorch's (major, minor), from its metadata (importing torch takes seconds)."""
    try:
        text = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    numbers = re.match(r"(\d+)\.(\d+)", text)
    return (int(numbers[1]), int(numbers[2])) if numbers else None


def missing() -> list[str]:
    """The import names not installed in this Python, ``torch`` also when older than the minimum."""
    importlib.invalidate_caches()
    names = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    version = torch_version()
    if "torch" not in names and version is not None and version < TORCH_MINIMUM:
        names.insert(0, "torch")
    return names


def missing_optional() -> list[str]:
    """The optional packages (:data:`OPTIONAL_PACKAGES`) not installed in this Python."""
    return [name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name) is None]


def consent_message(needed: list[str], optional: Sequence[str] = ()) -> str:
    """What the user is asked before anything is installed."""
    parts = [PACKAGES[name] + (TORCH_REQUIREMENT if name == "torch" else "") for name in needed]
    extra = ""
    if optional:
        names = ", ".join(OPTIONAL_PACKAGES[name] for name in optional)
        extra = f"\nAlso {names} (optional: faster segmentation on the CPU)."
    return (
        "LiverTumorAI needs these Python packages: " + ", ".join(parts) + "." + extra + "\n"
        "Install them now? (This can take several minutes; PyTorch is large.)"
    )


@dataclass
class Installer:
    """How packages get installed: ``torch(requirement)`` for PyTorch, ``pip(requirements)`` for the rest.
    Each raises on failure."""

    torch: Callable[[str], None]
    pip: Callable[[str], None]


def ensure(confirm: Callable[[str], bool], installer: Callable[[], Installer], report: Callable[[str], None]) -> bool:
    """True when everything the library needs is installed, installing what is missing if
    ``confirm(message)`` agrees. A failure, or packages still missing afterwards, is one message to
    ``report`` and False; nothing raises. ``installer`` is only called when something must be installed."""
    needed = missing()
    if not needed:
        return True
    optional = missing_optional()
    if not confirm(consent_message(needed, optional)):
        return False
    try:
        tools = installer()
        if "torch" in needed:
            tools.torch(TORCH_REQUIREMENT)
        others = [PACKAGES[name] for name in needed if name != "torch"]
        if others:
            tools.pip(" ".join(others))
    except Exception as error:  # pip and PyTorchUtils fail in many ways; the user needs one message
        report(f"Installing {', '.join(needed)} failed: {error}\nSee the Python console for pip's output.")
        return False
    still = missing()
    if still:
        report(
            f"After installing, {', '.join(still)} is still missing or too old (PyTorch {TORCH_REQUIREMENT} "
            "is needed); restart Slicer and try again, or install it from the PyTorch Utils module."
        )
        return False
    if optional:
        try:
            tools.pip(" ".join(OPTIONAL_PACKAGES[name] for name in optional))
        except Exception as error:  # optional: say so, and run with PyTorch
            report(f"The optional {', '.join(optional)} was not installed ({error}); segmentation runs with PyTorch.")
    return True


def slicer_installer() -> Installer:
    """Slicer's installers: PyTorchUtils' ``installTorch`` when the PyTorch extension is there (only its
    import is guarded, so a failure inside it is reported, not replaced by another build), else pip."""
    import slicer

    def pip(requirements: str) -> None:
        slicer.util.pip_install(requirements)

    try:
        import PyTorchUtils
    except ImportError:
        return Installer(torch=lambda requirement: pip("torch" + requirement), pip=pip)

    def torch(requirement: str) -> None:
        logic = PyTorchUtils.PyTorchUtilsLogic()
        if logic.installTorch(askConfirmation=False, torchVersionRequirement=requirement) is None:
            raise RuntimeError("PyTorch Utils did not install PyTorch")

    return Installer(torch=torch, pip=pip)


def model_choices(kind: str) -> list[tuple[str, str]]:
    """(label, model path) for a module's model list: the installed models of ``kind`` (``segmentation``
    or ``lesion``; lesion segmenters are left out), or the default alone until the packages are there
    (listing models imports torch)."""
    if missing():
        default = "demo-curriculum" if kind == "segmentation" else "demo-lesions"
        return [(f"{default} (default)", "")]
    from livertumor.models import list_models

    return [
        (f"{entry.name}:{entry.version} ({entry.method if kind == 'lesion' else entry.source})", str(entry.path))
        for entry in list_models()
        if entry.kind == kind and not (kind == "lesion" and entry.method == "seg")
    ]
