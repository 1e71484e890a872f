"""Inference backends for the sliding window's network forward: PyTorch (the reference), and compiled
graphs run by OpenVINO or ONNX Runtime on the CPU.

A compiled graph is traced from the PyTorch network with standard operations
(:func:`livertumor.networks.standard_ops`), with a free batch size and free window sides (any multiple of
the network's poolings, so one graph serves every window plan), and cached under
``$LIVERTUMOR_HOME/compiled/BACKEND/`` keyed by the weights' sha256 and the backend's version. Each
cache entry records the sha256 of its files; an entry whose key or files do not match is rebuilt, never
trusted. Builds go to a temporary folder renamed into place, so a killed run leaves no
half-written entry.

The backends are optional: ``pip install 'livertumor[openvino]'`` or ``'livertumor[onnxruntime]'``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import LiverTumorError
from .paths import user_models_dir

if TYPE_CHECKING:  # torch is imported when a network runs: the command's parser and `info` stay light
    import torch
    from torch import nn

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
#: Compiled backends: their Python module and the pip extra that installs it.
_GRAPH_BACKENDS = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
#: Written last into a cache entry: what it was built from and the sha256 of each file.
KEY_FILE = "key.json"

Report = Callable[[str], None]


def compiled_dir() -> Path:
    """Where compiled graphs are cached: ``compiled/`` beside the user's ``models/`` folder."""
    return user_models_dir().parent / "compiled"


def installed(backend: str) -> bool:
    """Whether ``backend`` can run here (torch always can)."""
    return backend == "torch" or importlib.util.find_spec(_GRAPH_BACKENDS[backend]) is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: OpenVINO on the CPU where installed, else PyTorch (always on a GPU). A compiled backend
    asked for by name must be installed and runs on the CPU only."""
    if backend not in BACKENDS:
        raise LiverTumorError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "openvino" if device.type == "cpu" and installed("openvino") else "torch"
    if backend == "torch":
        return backend
    if device.type != "cpu":
        raise LiverTumorError(f"the {backend} backend runs on the CPU only here; use --backend torch on {device}")
    if not installed(backend):
        raise LiverTumorError(f"the {backend} backend is not installed: pip install 'livertumor[{backend}]'")
    return backend


def backend_version(backend: str) -> str:
    return importlib.metadata.version("torch" if backend == "torch" else _GRAPH_BACKENDS[backend])


def native_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (AVX512_BF16 or AMX)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_precision(backend: str, precision: str) -> None:
    """Refuse a ``precision`` (fp32 or bf16) that compiled ``backend`` cannot run here."""
    if precision not in ("fp32", "bf16"):
        raise LiverTumorError(f"precision must be fp32 or bf16, got {precision!r}")
    if precision == "bf16" and backend != "openvino":
        raise LiverTumorError(f"the {backend} backend runs fp32 only: use --precision fp32 or --backend openvino")
    if precision == "bf16" and not native_bf16():
        raise LiverTumorError("this CPU has no native bf16 arithmetic (AVX512_BF16 or AMX): use --precision fp32")


class GraphForward:
    """``network``'s forward through a compiled backend: logits for a (N, 1, D, H, W) batch from one
    compiled graph, loaded from the cache or built (``report`` says so: the first run takes seconds to a
    minute).

    ``precision``: ``fp32``, or ``bf16`` (OpenVINO only, on CPUs with native bf16 arithmetic: about twice
    as fast there; docs/results/inference.md has its check against fp32). The cached graph is fp32 either
    way; the precision is chosen when it is loaded."""

    def __init__(
        self,
        network: nn.Module,
        backend: str,
        weights_sha256: str,
        cache: Path | None = None,
        report: Report = print,
        precision: str = "fp32",
    ) -> None:
        if backend not in _GRAPH_BACKENDS:
            raise LiverTumorError(f"{backend!r} is not a compiled backend ({', '.join(_GRAPH_BACKENDS)})")
        check_precision(backend, precision)
        self.network = network
        self.backend = backend
        self.precision = precision
        self.weights_sha256 = weights_sha256
        self.cache = cache or compiled_dir()
        self.report = report
        self._runner: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        if self._runner is None:
            self._runner = self._load(self.entry())
        return torch.from_numpy(self._runner(batch.detach().cpu().numpy()))

    def key(self) -> dict:
        return {
            "weights_sha256": self.weights_sha256,
            "backend": self.backend,
            "backend_version": backend_version(self.backend),
            "torch_version": backend_version("torch"),
        }

    def entry(self) -> Path:
        """The cache folder of this network's graph, built anew unless its key and files check out."""
        key = self.key()
        folder = self.cache / self.backend / self.weights_sha256[:16]
        if _entry_is_valid(folder, key):
            return folder
        self.report(f"compiling the network for {self.backend}, once")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            files = _export(self.network, self.backend, staging)
            key["files"] = {name: _sha256(staging / name) for name in files}
            (staging / KEY_FILE).write_text(json.dumps(key, indent=1))
            shutil.rmtree(folder, ignore_errors=True)  # a stale or corrupt entry
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder

    def _load(self, folder: Path) -> Callable[[np.ndarray], np.ndarray]:
        if self.backend == "openvino":
            import openvino

            # Always stated: OpenVINO would otherwise pick bf16 by itself on some CPUs, silently changing results.
            hint = "bf16" if self.precision == "bf16" else "f32"
            compiled = openvino.Core().compile_model(
                str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": hint}
            )
            return lambda batch: compiled(batch)[0]
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"ct": batch})[0]


def _sha256(path: Path) -> str:
    from .models import sha256_of

    return sha256_of(path)


def _entry_is_valid(folder: Path, key: dict) -> bool:
    try:
        recorded = json.loads((folder / KEY_FILE).read_text())
        files = recorded.pop("files")
        return recorded == key and all(_sha256(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False


def _export(network: nn.Module, backend: str, folder: Path) -> list[str]:
    """Trace ``network`` for (N, 1, D, H, W) inputs, every size free, into ``folder``; returns the file
    names written."""
    import torch

    from .networks import standard_ops

    side = 2 * network.config.divisor  # the smallest window the network takes, doubled
    example = torch.zeros(1, 1, side, side, side)
    with standard_ops(), torch.no_grad(), warnings.catch_warnings():
        # The exporters' remarks are not the user's to act on: the trace drops the network's check that the
        # window divides by its poolings (the sliding window's plans always do), and ONNX notes that
        # instance norm uses the input's statistics (it always does).
        warnings.simplefilter("ignore")
        if backend == "openvino":
            import openvino

            shape = openvino.PartialShape([-1, 1, -1, -1, -1])
            model = openvino.convert_model(network, example_input=example, input=[shape])
            openvino.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
            return ["model.xml", "model.bin"]
        torch.onnx.export(
            network,
            (example,),
            str(folder / "model.onnx"),
            input_names=["ct"],
            output_names=["logits"],
            dynamic_axes={name: {0: "batch", 2: "depth", 3: "height", 4: "width"} for name in ("ct", "logits")},
            dynamo=False,
        )
        return ["model.onnx"]


def network_forward(
    network: nn.Module, backend: str, device: torch.device, weights_sha256: str, report: Report, precision: str = "fp32"
) -> nn.Module | GraphForward:
    """What the sliding window calls for ``network``: the module itself (torch; ``precision`` is then the
    sliding window's autocast) or its compiled graph in ``precision``."""
    resolved = resolve_backend(backend, device)
    if resolved == "torch":
        return network
    return GraphForward(network, resolved, weights_sha256, report=report, precision=precision)
