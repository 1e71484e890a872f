"""Model files, the registry, sliding-window inference and `segment` on real CT geometry."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import DIRECTIONS

from livertumor.errors import DimensionError, LiverTumorError, NotCTError
from livertumor.inference import (
    DeviceError,
    class_map,
    gaussian_importance,
    resolve_device,
    segment,
    sliding_window,
    window_plan,
)
from livertumor.io import read_ct
from livertumor.models import (
    ModelChecksumError,
    ModelExistsError,
    ModelFileError,
    list_models,
    load_model,
    next_version,
    read_card,
    resolve_model,
    save_model,
)
from livertumor.networks import TINY, ResUNet3d
from livertumor.volume import Grid, Volume


def test_model_card_says_what_the_run_was(tiny_model):
    card = read_card(tiny_model)
    assert card.name == "tiny" and card.schema == "three-stage"
    assert [s["kind"] for s in card.stages] == ["whole", "patch", "whole"]
    assert card.preprocess.spacing == (5.0, 5.0, 5.0) and card.architecture == TINY
    assert card.training_data["train_cases"] and card.training_data["validation_cases"]
    assert "dg" in card.validation and "Not a medical device" in card.intended_use
    data = json.loads((tiny_model / "card.json").read_text())
    assert data["format"] == "livertumor-model/1" and len(data["weights"]["tumour"]["sha256"]) == 64


def test_checksum_mismatch_and_truncation_are_refused(tiny_model, tmp_path):
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    weights = copy / "tumour.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelChecksumError, match="fails its checksum"):
        load_model(copy)
    card = json.loads((copy / "card.json").read_text())  # a card updated to the cut file still fails safely
    import hashlib

    card["weights"]["tumour"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="cannot be read as safetensors"):
        load_model(copy)


def test_saving_never_overwrites(tiny_model):
    loaded = load_model(tiny_model)
    before = (tiny_model / "tumour.safetensors").read_bytes()
    with pytest.raises(ModelExistsError, match="never overwritten"):
        save_model(tiny_model, loaded.networks, loaded.card)
    assert (tiny_model / "tumour.safetensors").read_bytes() == before


def test_registry_finds_user_models_by_name_and_version(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    loaded = load_model(tiny_model)
    user = tmp_path / "home" / "models"
    for version in ("1", "1.1"):
        loaded.card.version = version
        save_model(user / f"tiny-{version}", loaded.networks, loaded.card)
    names = [(e.name, e.version, e.source) for e in list_models() if e.name == "tiny"]
    assert names == [("tiny", "1", "user"), ("tiny", "1.1", "user")]
    assert resolve_model("tiny") == user / "tiny-1.1"
    assert resolve_model("tiny:1") == user / "tiny-1"
    assert next_version("tiny", "1") == "1.2"
    with pytest.raises(ModelFileError, match="no model folder or registered model 'nothing'"):
        resolve_model("nothing")


def test_gaussian_importance_peaks_in_the_centre():
    weights = gaussian_importance((8, 16, 16))
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    assert weights[4, 8, 8] > weights[0, 8, 8] and weights[4, 8, 8] > weights[4, 0, 0]


class VoxelwiseNetwork(torch.nn.Module):
    """Logits from each voxel's own value: blending windows must reproduce it exactly."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 8 * (x - 0.5)], dim=1)


@pytest.mark.parametrize(("overlap", "batch"), [(0.0, 1), (0.5, 3), (0.8, 2)])
def test_sliding_window_stitches_exactly(overlap, batch):
    image = np.random.default_rng(0).random((21, 37, 45)).astype(np.float32)
    probabilities = sliding_window(VoxelwiseNetwork(), image, (8, 16, 16), 4, overlap, batch)
    expected = 1 / (1 + np.exp(-8 * (image - 0.5)))
    np.testing.assert_allclose(probabilities[1], expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("stretch", [0.0, 0.125, 0.5])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(192, 258, 364), (30, 101, 122), (64, 256, 256), (10, 300, 40)])
def test_window_plans_cover_the_image_with_the_promised_overlap(shape, overlap, stretch):
    block, divisor = (64, 256, 256), 16
    window, starts = window_plan(shape, block, divisor, overlap, stretch)
    covered = np.zeros(shape, bool)
    for start in starts:
        covered[tuple(slice(s, s + w) for s, w in zip(start, window))] = True
    assert covered.all()
    for axis, (size, side, trained) in enumerate(zip(shape, window, block)):
        assert side % divisor == 0
        if size <= trained:  # a small image: the window shrinks to it, as without stretch
            assert side == -(-size // divisor) * divisor
            continue
        assert trained <= side <= trained * (1 + stretch)
        positions = sorted({start[axis] for start in starts})
        assert all(b - a <= side * (1 - overlap) + 0.5 for a, b in zip(positions, positions[1:]))
    if stretch == 0:
        assert window == tuple(min(b, -(-s // divisor) * divisor) for b, s in zip(block, shape))


def test_a_stretched_window_covers_a_volume_slightly_wider_than_the_block_once():
    # the paper network's block on a 512x512x120 CT's preprocessed volume
    plain, plain_starts = window_plan((192, 258, 364), (64, 256, 256), 16, 0.25)
    stretched, stretched_starts = window_plan((192, 258, 364), (64, 256, 256), 16, 0.25, stretch=0.125)
    assert plain == (64, 256, 256) and len(plain_starts) == 16  # 258 rows take two windows of 256
    assert stretched == (64, 272, 256) and len(stretched_starts) == 8
    with pytest.raises(ValueError, match="stretch"):
        window_plan((8, 8, 8), (8, 8, 8), 4, 0.5, stretch=-0.1)


def test_sliding_window_stitches_stretched_windows_exactly():
    image = np.random.default_rng(2).random((21, 37, 45)).astype(np.float32)
    probabilities = sliding_window(VoxelwiseNetwork(), image, (8, 16, 16), 4, 0.25, 2, stretch=0.5)
    np.testing.assert_allclose(probabilities[1], 1 / (1 + np.exp(-8 * (image - 0.5))), atol=1e-5)


@pytest.mark.parametrize("channels", [2, 3])
def test_class_map_is_argmax_ties_included(channels):
    probabilities = np.random.default_rng(channels).random((channels, 6, 7, 8)).astype(np.float32)
    probabilities[1, :2] = probabilities[0, :2]  # exact ties go to the lower class
    probabilities[-1, 4:] = probabilities[0, 4:] = 1.0
    classes = class_map(probabilities)
    assert classes.dtype == np.uint8
    np.testing.assert_array_equal(classes, probabilities.argmax(0))


def test_sliding_window_with_one_window_equals_a_forward_pass():
    torch.manual_seed(0)
    network = ResUNet3d(TINY).eval()
    image = np.random.default_rng(1).random((8, 16, 20)).astype(np.float32)
    probabilities = sliding_window(network, image, (16, 32, 32), 4)
    with torch.no_grad():
        direct = torch.softmax(network(torch.from_numpy(image)[None, None]), 1)[0].numpy()
    np.testing.assert_allclose(probabilities, direct, atol=1e-5)


@pytest.mark.parametrize(
    "path", ["totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_ct_dicom", "dcmqi/ct-3slice"]
)
def test_segment_real_ct_lands_on_its_exact_grid(real_data, tiny_model, path):
    ct = read_ct(real_data / path)
    reported = []
    result = segment(ct, model=tiny_model, device="cpu", probabilities=True, progress=lambda f, m: reported.append(f))
    assert result.labels.grid == ct.grid  # shape, spacing, origin and direction: the very same
    assert result.tumour_probability.grid == ct.grid
    assert set(np.unique(result.labels.array)) <= {0, 2}
    assert 0.0 <= result.tumour_probability.array.min() and result.tumour_probability.array.max() <= 1.0
    # 3 mm head to foot is under a quarter of the tiny model's 80 mm blocks; 40 mm and more is not
    assert [caution.split(",")[0] for caution in result.cautions] == (
        ["the CT covers only 3 mm head to foot"] if path == "dcmqi/ct-3slice" else []
    )
    assert reported[0] == 0.0 and reported[-1] == 1.0 and reported == sorted(reported)


def test_segment_oblique_volume_stays_on_its_grid(tiny_model):
    from livertumor.phantom import make_phantom

    phantom = make_phantom(2, (24, 48, 48), (6.0, 6.0, 6.0))
    ct = Volume(phantom.ct.array, Grid(phantom.ct.shape, phantom.ct.spacing, (1.0, 2.0, 3.0), DIRECTIONS["oblique"]))
    assert segment(ct, model=tiny_model, device="cpu").labels.grid == ct.grid


def test_nothing_is_labelled_outside_the_patients_body(real_data, tiny_model, tmp_path):
    """A network that calls every voxel tumour (as version 7's seeds called air beside a real pelvis
    liver) gets labels only inside the body, on the real scan's exact grid."""
    from scipy import ndimage

    from livertumor.preprocess import body_mask

    loaded = load_model(tiny_model)
    last = loaded.networks["tumour"].head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-50.0)
        last.bias[-1] = 50.0
    everything = save_model(tmp_path / "everything", loaded.networks, dataclasses.replace(loaded.card, version="9"))
    ct = read_ct(real_data / "totalsegmentator/example_ct_sm.nii.gz")
    result = segment(ct, model=everything, device="cpu", probabilities=True)
    labelled = result.labels.array > 0
    body = body_mask(ct.array)
    # the model's 5 mm voxels on the CT's 3 mm grid: its edge may lie up to 3 voxels off
    near_body = ndimage.distance_transform_edt(~body) <= 3
    assert labelled.any() and not labelled[~near_body].any()
    assert labelled[ndimage.distance_transform_edt(body) > 3].mean() > 0.99
    assert (result.tumour_probability.array[~near_body] == 0).all()


def test_segment_refuses_bad_input(tiny_model):
    mr = Volume.from_array(np.random.default_rng(0).integers(0, 3000, (8, 16, 16)).astype(np.int16))
    with pytest.raises(NotCTError, match="not a CT"):
        segment(mr, model=tiny_model, device="cpu")
    with pytest.raises(DimensionError):
        import SimpleITK as sitk

        from livertumor.io import from_sitk

        segment(from_sitk(sitk.Image(8, 8, sitk.sitkInt16)), model=tiny_model)


def test_a_larger_window_covers_the_volume_in_fewer_passes_on_the_same_grid(tiny_model, tiny_data):
    from livertumor.io import read_ct

    ct = read_ct(tiny_data / "volume-0.nii")
    windows = []
    trained = segment(ct, model=tiny_model, device="cpu", backend="torch", progress=lambda f, m: windows.append(f))
    passes = []
    larger = segment(
        ct, model=tiny_model, device="cpu", backend="torch", window=(32, 64, 64), progress=lambda f, m: passes.append(f)
    )
    assert larger.labels.grid == trained.labels.grid == ct.grid
    assert len(passes) < len(windows)  # one progress step per window batch
    with pytest.raises(LiverTumorError, match="multiples of 4"):
        segment(ct, model=tiny_model, device="cpu", window=(30, 64, 64))


def test_unavailable_device_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu0")
    assert resolve_device("auto").type in ("cpu", "mps")
