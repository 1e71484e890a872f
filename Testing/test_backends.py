"""Compiled inference backends against the PyTorch reference: same logits within float rounding, same
labels on a phantom and on the real CT; the compiled-graph cache is rebuilt whenever it does not match."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli import run  # noqa: F401
from test_ensemble import perturbed

from livertumor import backends
from livertumor.backends import GraphForward, resolve_backend
from livertumor.errors import LiverTumorError
from livertumor.inference import segment
from livertumor.io import read_ct
from livertumor.models import combine_models, load_model

GRAPH_BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not backends.installed(name), reason=f"{name} is not installed"))
    for name in ("openvino", "onnxruntime")
]


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_logits_match_the_pytorch_network(tiny_model, backend, tmp_path):
    loaded = load_model(tiny_model)
    network = loaded.networks["tumour"]
    forward = GraphForward(network, backend, loaded.card.weights["tumour"]["sha256"], tmp_path, report=lambda m: None)
    batch = torch.rand(3, 1, 16, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 0.5
    with torch.no_grad():
        expected = network(batch)
    got = forward(batch)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-4 * float(expected.abs().max()), rtol=0)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # a window as small as the poolings allow: the deepest level is one voxel (a small image's case)
    smallest = torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(smallest)
    torch.testing.assert_close(forward(smallest), expected, atol=2e-4 * float(expected.abs().max()), rtol=0)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_labels_match_pytorch_on_a_phantom_and_the_real_ct(tiny_model, tiny_data, real_data, backend):
    cases = [(tiny_data / "volume-1.nii", 0.0), (real_data / "totalsegmentator/example_ct_sm.nii.gz", 0.0)]
    cases.append((real_data / "totalsegmentator/example_ct_sm.nii.gz", 0.5))  # one graph, stretched windows
    for path, stretch in cases:
        ct = read_ct(path)
        options = {"device": "cpu", "probabilities": True, "stretch": stretch}
        reference = segment(ct, model=tiny_model, backend="torch", **options)
        compiled = segment(ct, model=tiny_model, backend=backend, **options)
        assert compiled.labels.grid == ct.grid
        np.testing.assert_array_equal(compiled.labels.array, reference.labels.array)
        np.testing.assert_allclose(
            compiled.tumour_probability.array, reference.tumour_probability.array, atol=1e-3, rtol=0
        )


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_the_cache_is_used_and_rebuilt_when_stale_or_corrupt(tiny_model, backend, tmp_path):
    loaded = load_model(tiny_model)
    network, sha = loaded.networks["tumour"], loaded.card.weights["tumour"]["sha256"]
    batch = torch.rand(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = network(batch)

    def compile_messages(weights_sha: str = sha) -> list[str]:
        messages: list[str] = []
        forward = GraphForward(network, backend, weights_sha, tmp_path, report=messages.append)
        torch.testing.assert_close(forward(batch), expected, atol=2e-4 * float(expected.abs().max()), rtol=0)
        return messages

    assert len(compile_messages()) == 1  # built once
    assert compile_messages() == []  # then loaded from the cache
    entries = list((tmp_path / backend).iterdir())
    assert len(entries) == 1 and not [p for p in (tmp_path / backend).iterdir() if p.name.startswith(".")]
    entry = entries[0]
    graph = max((p for p in entry.iterdir() if p.name != backends.KEY_FILE), key=lambda p: p.stat().st_size)
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # a half-written or damaged file
    assert len(compile_messages()) == 1 and compile_messages() == []
    key = json.loads((entry / backends.KEY_FILE).read_text())
    key["backend_version"] = "0.0-older"
    (entry / backends.KEY_FILE).write_text(json.dumps(key))
    assert len(compile_messages()) == 1  # another backend version: rebuilt
    (entry / backends.KEY_FILE).write_text("{not json")
    assert len(compile_messages()) == 1
    assert len(compile_messages("0" * 64)) == 1  # other weights: an entry of their own
    assert len(list((tmp_path / backend).iterdir())) == 2


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_an_ensemble_compiles_to_one_graph_of_its_members_mean(tiny_model, tiny_data, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    ensemble = combine_models([tiny_model, perturbed(tiny_model, tmp_path / "b", 1)], tmp_path / "ensemble")
    ct = read_ct(tiny_data / "volume-1.nii")
    reference, compiled = (
        segment(ct, model=ensemble, backend=name, device="cpu", probabilities=True) for name in ("torch", backend)
    )
    np.testing.assert_array_equal(compiled.labels.array, reference.labels.array)
    np.testing.assert_allclose(compiled.tumour_probability.array, reference.tumour_probability.array, atol=1e-3)
    cached = [entry.name for entry in (tmp_path / "home" / "compiled" / backend).iterdir()]
    assert cached == [load_model(ensemble).weights_digest("tumour")[:16]]


def test_backend_choice_and_its_errors(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("torch", cpu) == "torch" and resolve_backend("auto", gpu) == "torch"
    assert resolve_backend("auto", cpu) == ("openvino" if backends.installed("openvino") else "torch")
    with pytest.raises(LiverTumorError, match="unknown backend 'tensorrt'"):
        resolve_backend("tensorrt", cpu)
    with pytest.raises(LiverTumorError, match="runs on the CPU only"):
        resolve_backend("openvino", gpu)
    monkeypatch.setattr(backends, "installed", lambda name: name == "torch")
    with pytest.raises(LiverTumorError, match=r"not installed: pip install 'livertumor\[onnxruntime\]'"):
        resolve_backend("onnxruntime", cpu)
    assert resolve_backend("auto", cpu) == "torch"


@pytest.mark.skipif(not backends.installed("openvino"), reason="openvino is not installed")
def test_bf16_runs_in_bf16_where_the_cpu_has_it_and_is_refused_where_not(tiny_model, tiny_data, tmp_path):
    loaded = load_model(tiny_model)
    network, sha = loaded.networks["tumour"], loaded.card.weights["tumour"]["sha256"]
    with pytest.raises(LiverTumorError, match="onnxruntime backend runs fp32 only"):
        GraphForward(network, "onnxruntime", sha, tmp_path, precision="bf16")
    if not backends.native_bf16():
        with pytest.raises(LiverTumorError, match="no native bf16"):
            GraphForward(network, "openvino", sha, tmp_path, precision="bf16")
        return
    batch = torch.rand(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 0.5
    fp32, bf16 = (
        GraphForward(network, "openvino", sha, tmp_path, report=lambda m: None, precision=p)(batch)
        for p in ("fp32", "bf16")
    )
    error = float((bf16 - fp32).abs().max() / fp32.abs().max())
    assert 1e-4 < error < 0.05  # bf16's 8-bit mantissa: visibly not fp32, and close to it
    ct = read_ct(tiny_data / "volume-1.nii")
    options = {"model": tiny_model, "backend": "openvino", "device": "cpu", "probabilities": True}
    fp32_result, bf16_result = (segment(ct, precision=p, **options) for p in ("fp32", "bf16"))
    assert bf16_result.labels.grid == ct.grid
    assert np.mean(bf16_result.labels.array == fp32_result.labels.array) > 0.99
    # segment passes its precision to the graph: the probabilities move, a little
    moved = np.abs(bf16_result.tumour_probability.array - fp32_result.tumour_probability.array).max()
    assert 1e-5 < moved < 0.1
