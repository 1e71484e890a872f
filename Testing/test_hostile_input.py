"""Hostile and careless input: model cards that lie, CTs with NaN, outputs that would replace inputs.
Each case ends in one line on stderr and exit 2 (or a library error), with nothing outside the output
folder changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from test_cli import run

from livertumor.errors import LiverTumorError
from livertumor.models import ModelFileError, import_model, read_card

CT = "totalsegmentator/example_ct.nii.gz"


def _tree_digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _card_variant(tiny_model, tmp_path, name: str, change) -> object:
    folder = shutil.copytree(tiny_model, tmp_path / name)
    card = json.loads((folder / "card.json").read_text())
    card = change(card)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _set(path: str, value):
    def change(card):
        target = card
        *parents, key = path.split(".")
        for parent in parents:
            target = target[parent]
        target[key] = value
        return card

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("architecture.widths", [4, 8, 1_000_000]), "widths = 1000000 must be a whole number in 1..1024"),
        (_set("architecture.in_channels", 1_000_000_000), "in_channels"),
        (_set("architecture.encoder_blocks", [100000, 1]), "encoder_blocks"),
        (_set("preprocess.window_width", 0), "window_width = 0"),
        (_set("preprocess.window_width", float("nan")), "window_width = nan"),
        (_set("preprocess.spacing", [0, 2.5, 2.5]), "spacing = 0"),
        (_set("preprocess.block", [0, 64, 64]), "block = 0"),
        (_set("preprocess.block", [32, 64]), "three numbers"),
        (lambda card: [card], "holds a JSON list"),
        (_set("name", "../../../ESCAPED"), "must be a plain name"),
        (_set("weights.tumour.file", "../victim-1/tumour.safetensors"), "a file inside the folder"),
        (_set("weights.tumour.file", "/etc/passwd"), "a file inside the folder"),
    ],
)
def test_lying_cards_are_refused_before_anything_is_built(tiny_model, tmp_path, real_data, change, message):
    folder = _card_variant(tiny_model, tmp_path, "lying", change)
    with pytest.raises(LiverTumorError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_card(folder)
    result = run("segment", real_data / CT, "-o", tmp_path / "out", "--model", folder)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


def test_import_stays_inside_the_user_models_folder(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    victim = import_model(tiny_model)
    before = _tree_digest(tmp_path / "home")
    escaping = _card_variant(tiny_model, tmp_path, "escape", _set("name", "../../../ESCAPED"))
    with pytest.raises(ModelFileError, match="plain name"):
        import_model(escaping)
    overwriting = _card_variant(
        tiny_model, tmp_path, "overwrite", _set("weights.tumour.file", f"../{victim.name}/tumour.safetensors")
    )
    with pytest.raises(ModelFileError, match="inside the folder"):
        import_model(overwriting)
    assert _tree_digest(tmp_path / "home") == before
    assert not any(tmp_path.glob("**/ESCAPED*"))


def test_saved_weights_are_reproducible_and_readable_by_others(tmp_path):
    import torch

    from livertumor.models import ModelCard, save_model
    from livertumor.networks import TINY, ResUNet3d
    from livertumor.preprocess import PreprocessConfig

    torch.manual_seed(0)
    network = ResUNet3d(TINY)
    digests = set()
    for copy in range(4):
        card = ModelCard("same", "1", TINY, PreprocessConfig(), "three-stage")
        folder = save_model(tmp_path / f"m{copy}", {"tumour": network}, card)
        digests.add(card.weights["tumour"]["sha256"])
        umask = os.umask(0)
        os.umask(umask)
        assert (folder / "tumour.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert len(digests) == 1


def _one_line_refusal(result, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_outputs_never_replace_inputs(tiny_data, tmp_path):
    pred, truth = tiny_data / "segmentation-0.nii", tiny_data / "segmentation-1.nii"
    ct = tiny_data / "volume-0.nii"
    before = _tree_digest(tiny_data)
    _one_line_refusal(run("evaluate", "--pred", pred, "--gt", truth, "--json", truth), "is an input of this run")
    _one_line_refusal(run("evaluate", "--pred", pred, "--gt", truth, "--csv", pred), "is an input of this run")
    linked = tmp_path / "link.nii"
    linked.symlink_to(ct)
    for output in (ct, linked):
        result = run("classify", ct, "--lesions", truth, "-o", output, "--overwrite")
        _one_line_refusal(result, "is an input of this run")
    assert _tree_digest(tiny_data) == before


def test_two_inputs_bound_for_one_output_are_refused_before_any_work(tiny_model, tiny_data, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(tiny_data / "volume-0.nii", tmp_path / folder / "ct.nii")
    shutil.copy(tiny_data / "volume-0.nii", tmp_path / "a" / "case.nii")
    out = tmp_path / "out"
    result = run("segment", tmp_path / "a/ct.nii", tmp_path / "b/ct.nii", "-o", out, "--model", tiny_model)
    _one_line_refusal(result, "would both be written to")
    assert not out.exists()


def test_filled_folders_need_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ("phantom", "--out", out, "--cases", 1, "--shape", 24, 48, 48, "--spacing", 5, 6, 6)
    _one_line_refusal(run(*args), "is not empty; pass --overwrite")
    assert run(*args, "--overwrite").returncode == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").is_file()


def test_a_second_run_into_a_busy_folder_refuses_at_once_and_a_dead_runs_lock_is_taken_over(
    tiny_model, tiny_data, tmp_path
):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / ".livertumor.lock").write_text(str(os.getpid()))  # a live process holds it
    args = ("segment", tiny_data / "volume-0.nii", "-o", out, "--model", tiny_model, "--device", "cpu")
    _one_line_refusal(run(*args), f"another livertumor run (process {os.getpid()})")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".livertumor.lock").write_text(dead.stdout.strip())
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert (out / "volume-0_seg.nii.gz").is_file() and not (out / ".livertumor.lock").exists()


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_a_ct_with_nan_is_refused_by_segment(tiny_model, tiny_data, tmp_path, suffix):
    import numpy as np

    from livertumor.io import read_ct, write_volume

    ct = read_ct(tiny_data / "volume-0.nii")
    ct.array[3, 4, 5] = np.nan
    write_volume(ct, tmp_path / f"nan{suffix}")
    result = run("segment", tmp_path / f"nan{suffix}", "-o", tmp_path / "out", "--model", tiny_model)
    _one_line_refusal(result, "NaN or infinite")


def test_lesion_maps_are_read_as_labels_liver_only_maps_have_no_lesion_and_images_are_refused():
    import numpy as np

    from livertumor.lesions.classify import lesion_voxels

    lits = np.zeros((20, 20, 20), np.uint8)
    lits[2:18, 2:18, 2:18] = 1
    lits[5:8, 5:8, 5:8] = 2
    assert lesion_voxels(lits, 1.0).sum() == 27  # 0/1/2: the tumour label
    liver_only = np.where(lits > 0, 1, 0)
    assert not lesion_voxels(liver_only, 1.0).any()  # a liver (4 L here) without tumour: no lesion
    small = np.zeros_like(lits)
    small[5:8, 5:8, 5:8] = 1
    small[12:14, 12:14, 12:14] = 1
    assert lesion_voxels(small, 1.0).sum() == 35  # a plain 0/1 lesion mask
    ct = np.random.default_rng(0).integers(-1000, 1000, lits.shape)
    with pytest.raises(LiverTumorError, match="an image"):
        lesion_voxels(ct, 1.0)
    with pytest.raises(LiverTumorError, match="fractions"):
        lesion_voxels(lits * 0.5, 1.0)


def test_classify_a_lesion_free_segmentation_gives_an_empty_report(tiny_data, tmp_path):
    import numpy as np

    from livertumor.io import read_label, write_volume

    label = read_label(tiny_data / "segmentation-0.nii")
    write_volume(label.with_array((label.array > 0).astype(np.uint8)), tmp_path / "liver.nii.gz")
    result = run(
        "classify", tiny_data / "volume-0.nii", "--lesions", tmp_path / "liver.nii.gz", "-o", tmp_path / "r.json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lesions"] == [] and report["model"].startswith("demo-lesions:")
    assert "no lesions" in result.stdout
    # a CT given as the lesion map is refused, not read as one 16 L "cyst"
    ct_as_lesions = run(
        "classify", tiny_data / "volume-0.nii", "--lesions", tiny_data / "volume-0.nii", "-o", tmp_path / "x.json"
    )
    _one_line_refusal(ct_as_lesions, "an image (a CT?)")
    # lesions below --min-lesion-mm are not reported
    too_small = run(
        "classify",
        tiny_data / "volume-0.nii",
        "--lesions",
        tiny_data / "segmentation-0.nii",
        "-o",
        tmp_path / "s.json",
        "--min-lesion-mm",
        100,
    )
    assert too_small.returncode == 0, too_small.stderr
    assert "no lesions: the lesion map holds no tumour of 100 mm or more" in too_small.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("segment", "{ct}", "-o", "{out}", "--overlap", "1.5"), "argument --overlap: 1.5 is outside [0, 0.95]"),
        (("segment", "{ct}", "-o", "{out}", "--batch-size", "0"), "argument --batch-size: 0 is outside [1, 256]"),
        (("segment", "{ct}", "-o", "{out}", "--stretch", "-0.5"), "argument --stretch: -0.5 is outside [0, 1]"),
        (("train", "--data", "{tmp}", "--out", "{out}", "--config", "{tmp}/missing.json"), "cannot read"),
        (("train", "--data", "{tmp}", "--out", "{out}", "--config", "{tmp}/list.json"), "not an object"),
        (("train", "--data", "{tmp}", "--out", "{out}", "--config", "{tmp}/bad.json"), "invalid training settings"),
        (
            ("train", "--data", "{tmp}", "--out", "{out}", "--stage-epochs", "1", "1", "1", "--average-epochs", "4"),
            "average_epochs is 4, more than the run's 3 epochs",
        ),
        (("segment", "{tmp}/raw.nii.gz", "-o", "{out}"), "not gzip"),
        (("segment", "{tmp}/empty.nii.gz", "-o", "{out}"), "cannot read"),
        (("info", "{tmp}/empty.nii.gz"), "cannot read"),
        (("phantom", "--out", "{out}", "--cases", "-3"), "argument --cases: -3 is outside"),
    ],
)
def test_bad_options_and_files_are_one_line_and_exit_2(real_data, tmp_path, args, message):
    ct = real_data / "totalsegmentator/example_ct_sm.nii.gz"
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text('{"stage_epochs": 5, "widths": "x", "nonsense": 1}')
    (tmp_path / "raw.nii.gz").write_bytes(__import__("gzip").decompress(ct.read_bytes()))
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    values = {"ct": ct, "out": tmp_path / "out", "tmp": tmp_path}
    result = run(*(a.format(**values) for a in args))
    _one_line_refusal(result, message)


def test_lying_headers_are_refused_before_allocation(real_data, tmp_path):
    import re
    import subprocess
    import sys

    import SimpleITK as sitk

    from livertumor.io import read_ct, to_sitk, write_volume

    ct = read_ct(real_data / "totalsegmentator/example_ct_sm.nii.gz")
    write_volume(ct, tmp_path / "ct.nrrd")
    head, _, data = (tmp_path / "ct.nrrd").read_bytes().partition(b"\n\n")
    (tmp_path / "lie.nrrd").write_bytes(re.sub(rb"sizes: [0-9 ]+", b"sizes: 2048 2048 1000", head) + b"\n\n" + data)
    write_volume(ct, tmp_path / "ct.mha")
    mha = (tmp_path / "ct.mha").read_bytes()
    (tmp_path / "lie.mha").write_bytes(re.sub(rb"DimSize = [0-9 ]+", b"DimSize = 4096 4096 900", mha, count=1))
    sitk.WriteImage(to_sitk(ct), str(tmp_path / "cut.hdr"))
    image = (tmp_path / "cut.img").read_bytes()
    (tmp_path / "cut.img").write_bytes(image[: len(image) // 2])
    for name in ("lie.nrrd", "lie.mha", "cut.hdr"):
        # in a child limited to 3 GB of address space: a reader that allocated first would fail, not refuse
        code = (
            "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from livertumor.cli import main; sys.exit(main(['info', sys.argv[1]]))"
        )
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True)
        _one_line_refusal(result, "more than the file holds")


def test_a_header_whose_sizes_are_not_numbers_is_refused_clearly(tmp_path):
    # found by the fuzz test: a flipped byte in an NRRD's sizes line reached a bare float() ValueError
    import numpy as np

    from livertumor.errors import ImageReadError
    from livertumor.io import read_image, write_volume
    from livertumor.volume import Volume

    write_volume(Volume.from_array(np.zeros((4, 5, 6), np.int16)), tmp_path / "ct.nrrd")
    head, _, data = (tmp_path / "ct.nrrd").read_bytes().partition(b"\n\n")
    for garbage in (b"\xfe12", b"nan", b"inf"):
        (tmp_path / "bad.nrrd").write_bytes(head.replace(b"sizes: 6", b"sizes: " + garbage) + b"\n\n" + data)
        with pytest.raises(ImageReadError, match=r"sizes .* are not numbers"):
            read_image(tmp_path / "bad.nrrd")


def test_dicom_series_with_missing_or_broken_slices_is_refused(real_data, tmp_path):
    import subprocess
    import sys

    from livertumor.errors import ImageReadError
    from livertumor.io import read_image

    series = tmp_path / "series"
    shutil.copytree(real_data / "totalsegmentator/example_ct_dicom", series)
    assert read_image(series).grid.spacing[2] == pytest.approx(2.0)
    files = sorted(series.iterdir())
    for file in files[8:11]:
        file.unlink()
    with pytest.raises(ImageReadError, match="not evenly spaced"):
        read_image(series)
    broken = tmp_path / "broken"
    shutil.copytree(real_data / "totalsegmentator/example_ct_dicom", broken)
    victim = sorted(broken.iterdir())[10]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"not evenly spaced|unreadable"):
        read_image(broken)
    result = subprocess.run([sys.executable, "-m", "livertumor", "info", str(series)], capture_output=True, text=True)
    _one_line_refusal(result, "not evenly spaced")


def test_a_pickled_init_file_is_refused_in_one_line_and_runs_nothing(tiny_data, tmp_path):
    import pickle

    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    assert pickle.dumps(Payload())  # the file really holds a reduce payload
    result = run(
        "train-lesions",
        "--data",
        tiny_data,
        "--out",
        tmp_path / "m",
        "--init",
        f"imagenet:{tmp_path / 'evil.pt'}",
        "--epochs",
        1,
        "--folds",
        0,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "holds pickled objects" in errors[0]  # (progress events go to stderr too)
    assert not marker.exists() and not (tmp_path / "m").exists()
