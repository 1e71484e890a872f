"""The Slicer modules' Logic against real MRML from slicer-core: node <-> volume geometry (LPS-flipped
and oblique, and against Slicer's own NIfTI reader), segmentation nodes on the CT's grid with standard
terminology, lesion tables, fine-tuning case checks and runs, out-of-process runs with progress and
cancel, lesion classification, and the .ui files."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import vtk
from conftest import DIRECTIONS, REPO

for module_dir in (REPO, REPO / "LiverTumorCurriculum", REPO / "LiverLesionClassify"):
    sys.path.insert(0, str(module_dir))

slicer = pytest.importorskip("slicer", reason="slicer-core is a test dependency (pip install -e .[test])")

from LiverLesionClassifyLib import LiverLesionClassifyLogic  # noqa: E402
from LiverTumorCurriculumLib import LiverTumorCurriculumLogic  # noqa: E402

from livertumor.errors import DimensionError, GridMismatchError, LiverTumorError  # noqa: E402
from livertumor.io import read_ct, read_image, read_label  # noqa: E402
from livertumor.lesions.measure import measure_lesions  # noqa: E402
from livertumor.phantom import LESION_CLASSES  # noqa: E402
from livertumor.terminology import TERMINOLOGY_FILE  # noqa: E402
from livertumor.volume import Grid, Volume  # noqa: E402
from LiverTumorAICommon import mrml  # noqa: E402
from LiverTumorAICommon.process import Cancelled, ProcessFailed  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def segmentation_converters():
    """What the Slicer application registers at start-up: the segmentation representation converters."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


@pytest.fixture
def scene():
    """A real MRML scene with the logics Slicer's modules would attach to it."""
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    yield scene
    segmentations.SetMRMLScene(None)
    colors.SetMRMLScene(None)


def _ct(direction: np.ndarray, shape=(6, 7, 8)) -> Volume:
    rng = np.random.default_rng(0)
    grid = Grid(shape, (0.7, 0.8, 2.5), (-12.5, 30.0, 7.0), direction)
    return Volume(rng.integers(-1000, 1000, shape).astype(np.int16), grid)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_volume_node_round_trip_keeps_geometry(scene, direction):
    ct = _ct(DIRECTIONS[direction])
    node = mrml.add_volume_node(scene, ct, "ct")
    back = mrml.volume_from_node(node)
    assert np.array_equal(back.array, ct.array) and back.grid.same_as(ct.grid)
    # RAS in Slicer: the first voxel's centre is the LPS origin with x and y negated
    ras = [0.0, 0.0, 0.0, 1.0]
    matrix = mrml._ijk_to_ras(node)
    assert np.allclose((matrix @ ras)[:3], [-ct.grid.origin[0], -ct.grid.origin[1], ct.grid.origin[2]])


def test_slicer_reader_and_library_reader_agree_on_real_nifti(scene, real_data):
    """The NIfTI stored in RAS (flipped LPS) read by Slicer's own storage node gives our grid."""
    path = real_data / "totalsegmentator/example_ct.nii.gz"
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "real")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    ours = read_image(path)
    from_node = mrml.volume_from_node(node)
    assert from_node.grid.same_as(ours.grid), (from_node.grid.describe(), ours.grid.describe())
    assert np.array_equal(from_node.array, ours.array)


def test_non_scalar_and_2d_volumes_are_refused(scene):
    import vtk

    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    vector.SetAndObserveImageData(image)
    with pytest.raises(DimensionError, match="3 components per voxel"):
        mrml.volume_from_node(vector)
    flat = mrml.add_volume_node(
        scene, Volume(np.zeros((1, 5, 5), np.int16), Grid((1, 5, 5), (1, 1, 1), (0, 0, 0))), "x"
    )
    with pytest.raises(DimensionError, match="a CT is 3D"):
        mrml.volume_from_node(flat)


def test_terminology_file_loads_in_slicer_and_names_segments():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    assert context == "LiverTumorAI liver and liver lesions"
    terms = mrml.load_terms()
    assert set(terms) == {"liver", "tumor", *LESION_CLASSES}
    for term in terms.values():
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(term.terminology, entry)
    entry = slicer.vtkSlicerTerminologyEntry()
    logic.DeserializeTerminologyEntry(terms["metastasis"].terminology, entry)
    assert entry.GetTypeObject().GetCodeValue() == "14799000"
    assert entry.GetRegionObject().GetCodeValue() == "10200004"


@pytest.fixture(scope="module")
def tiny_case(tiny_data):
    ct = read_ct(tiny_data / "volume-1.nii")
    return ct, read_label(tiny_data / "segmentation-1.nii", reference=ct.grid)


@pytest.fixture(scope="module")
def multi_lesion_case(tiny_data):
    """The tiny phantom with the most lesions (at least two): lesion splitting needs several."""
    from livertumor.lesions.measure import lesion_components

    cases = []
    for number in range(5):
        ct = read_ct(tiny_data / f"volume-{number}.nii")
        label = read_label(tiny_data / f"segmentation-{number}.nii", reference=ct.grid)
        cases.append((lesion_components(label.array == 2)[1], number, ct, label))
    count, _, ct, label = max(cases, key=lambda c: c[:2])
    assert count >= 2
    return ct, label


def _labels_in_scene(scene, tiny_case):
    ct, label = tiny_case
    volume = mrml.add_volume_node(scene, ct, "volume-1")
    segmentation = mrml.add_segmentation_node(
        scene, volume, [("liver", label.array == 1), ("tumor", label.array == 2)], "truth"
    )
    return volume, segmentation


def test_segmentation_node_lies_on_the_ct_grid(scene, tiny_case):
    volume, segmentation = _labels_in_scene(scene, tiny_case)
    _, label = tiny_case
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(2)]
    assert [segmentation.GetSegmentation().GetSegment(i).GetName() for i in ids] == ["Liver", "Liver tumor"]
    assert np.array_equal(mrml.segment_mask(segmentation, ids[1], volume), label.array == 2)
    assert np.array_equal(mrml.segment_mask(segmentation, ids[0], volume), label.array == 1)
    colour = segmentation.GetSegmentation().GetSegment(ids[1]).GetColor()
    assert np.allclose(colour, mrml.load_terms()["tumor"].color)


def test_segmentation_on_another_grid_is_refused(scene, tiny_case):
    ct, label = tiny_case
    volume = mrml.add_volume_node(scene, ct, "ct")
    other_grid = Grid(ct.grid.shape, ct.grid.spacing, tuple(np.add(ct.grid.origin, (2.0, 0, 0))), ct.grid.direction)
    other = mrml.add_volume_node(scene, Volume(ct.array, other_grid), "other")
    segmentation = mrml.add_segmentation_node(scene, other, [("tumor", label.array == 2)], "elsewhere")
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    with pytest.raises(GridMismatchError, match="another voxel grid"):
        mrml.segment_mask(segmentation, segment_id, volume)


def test_out_of_process_segment_progress_table_and_rerun(scene, tiny_case, tiny_model):
    import livertumor

    ct, _ = tiny_case
    volume = mrml.add_volume_node(scene, ct, "volume-1")
    steps = []
    logic = LiverTumorCurriculumLogic(scene, python=sys.executable)
    job = logic.start_segment(volume, model=str(tiny_model), device="cpu", progress=lambda f, m: steps.append(f))
    result = job.wait()
    assert steps and steps[-1] == 1.0 and steps == sorted(steps) and result.cautions == []
    expected = livertumor.segment(ct, model=tiny_model, device="cpu").labels.array
    segment_id = result.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Liver tumor")
    assert np.array_equal(mrml.segment_mask(result.segmentation, segment_id, volume), expected == 2)
    entry = result.segmentation.GetSegmentation().GetSegment(segment_id).GetTerminology()
    assert "SCT^108369006^Neoplasm" in entry
    rows = mrml.table_rows(result.table)
    _, measured = measure_lesions(ct.with_array(expected), label=2)
    assert [int(r["id"]) for r in rows] == [m.id for m in measured]
    if rows:
        assert rows[0]["volume (mL)"] == pytest.approx(measured[0].volume_ml, abs=1e-3)
        centre = mrml.lesion_centre_ras(result.table, 0)
        assert centre[0] == pytest.approx(-measured[0].centroid_lps_mm[0], abs=0.01)
    # the user edits the result; a second run makes a new node and leaves the edited one alone
    result.segmentation.SetName("edited by me")
    again = logic.segment(volume, model=str(tiny_model), device="cpu", backend="torch")
    assert again is not result.segmentation and result.segmentation.GetScene() is scene
    assert again.GetName() != "edited by me"
    again_id = again.GetSegmentation().GetSegmentIdBySegmentName("Liver tumor")
    assert np.array_equal(mrml.segment_mask(again, again_id, volume), expected == 2)  # PyTorch, same labels
    fast = logic.segment(volume, model=str(tiny_model), device="cpu", backend="torch", quality="fast")
    fast_expected = livertumor.segment(ct, model=tiny_model, device="cpu", overlap=0.25, stretch=0.125).labels.array
    fast_id = fast.GetSegmentation().GetSegmentIdBySegmentName("Liver tumor")
    assert np.array_equal(mrml.segment_mask(fast, fast_id, volume), fast_expected == 2)


def test_cancel_ends_the_process_tree_and_leaves_the_scene(scene, tiny_model):
    from livertumor.phantom import make_phantom

    big = make_phantom(seed=3, shape=(160, 256, 256), spacing_zyx=(1.0, 1.0, 1.0)).ct
    volume = mrml.add_volume_node(scene, big, "big")
    nodes_before = scene.GetNumberOfNodes()
    started = []
    logic = LiverTumorCurriculumLogic(scene, python=sys.executable)
    job = logic.start_segment(volume, model=str(tiny_model), device="cpu", progress=lambda f, m: started.append(f))
    deadline = time.time() + 120
    while not started and time.time() < deadline and not job.poll():
        time.sleep(0.05)
    assert started, job.process.log
    pid = job.process.pid
    job.cancel()
    with pytest.raises(Cancelled):
        job.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert scene.GetNumberOfNodes() == nodes_before
    assert not job.workdir.exists()


def test_corrupt_model_fails_with_the_checksum_message(scene, tiny_case, tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "tumour.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"01234567")
    volume = mrml.add_volume_node(scene, tiny_case[0], "ct")
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(ProcessFailed, match="fails its checksum"):
        LiverTumorCurriculumLogic(scene, python=sys.executable).segment(volume, model=str(broken), device="cpu")
    assert scene.GetNumberOfNodes() == nodes_before


def test_a_ct_too_thin_for_the_model_comes_back_with_a_caution(scene, real_data, tiny_model):
    from livertumor.io import read_ct

    volume = mrml.add_volume_node(scene, read_ct(real_data / "dcmqi/ct-3slice"), "three slices")
    logic = LiverTumorCurriculumLogic(scene, python=sys.executable)
    result = logic.start_segment(volume, model=str(tiny_model), device="cpu", backend="torch").wait()
    assert len(result.cautions) == 1 and result.cautions[0].startswith("the CT covers only 3 mm head to foot")


def test_an_ensemble_segments_and_is_finetuned_from_the_scene(scene, tiny_case, tiny_model, tmp_path):
    from test_ensemble import perturbed

    import livertumor
    from livertumor.models import combine_models, read_card

    ensemble = combine_models([tiny_model, perturbed(tiny_model, tmp_path / "b", 1)], tmp_path / "ensemble")
    ct, label = tiny_case
    volume = mrml.add_volume_node(scene, ct, "ct")
    logic = LiverTumorCurriculumLogic(scene, python=sys.executable)
    result = logic.segment(volume, model=str(ensemble), device="cpu", backend="torch")
    expected = livertumor.segment(ct, model=ensemble, device="cpu").labels.array
    segment_id = result.GetSegmentation().GetSegmentIdBySegmentName("Liver tumor")
    assert np.array_equal(mrml.segment_mask(result, segment_id, volume), expected == 2)
    truth = mrml.add_segmentation_node(
        scene, volume, [("liver", label.array == 1), ("tumor", label.array == 2)], "truth"
    )
    nodes_before = scene.GetNumberOfNodes()
    progress = []
    tuned = logic.finetune(
        [(volume, truth)],
        model=str(ensemble),
        out=tmp_path / "tuned",
        device="cpu",
        epochs=1,
        iterations=1,
        progress=lambda fraction, message: progress.append(fraction),
    )
    # the job reports the combined model, not a member; one progress run over both members
    assert tuned == tmp_path / "tuned" and read_card(tuned).members() == ["tumour", "tumour.2"]
    assert read_card(tuned).parent == "tiny-ensemble:1"
    iterations = [fraction for fraction in progress if 0 < fraction < 1]
    assert iterations == sorted(iterations) and progress[-1] == 1.0
    assert scene.GetNumberOfNodes() == nodes_before


def test_finetune_cases_are_checked_and_every_problem_listed(scene, tiny_case):
    volume, segmentation = _labels_in_scene(scene, tiny_case)
    label = tiny_case[1]
    empty = mrml.add_segmentation_node(scene, volume, [("liver", label.array == 1)], "liver only")
    flat = mrml.add_volume_node(
        scene, Volume(np.zeros((1, 4, 4), np.int16), Grid((1, 4, 4), (1, 1, 1), (0, 0, 0))), "2d"
    )
    logic = LiverTumorCurriculumLogic(scene, python=sys.executable)
    check = logic.check_cases([(volume, segmentation), (volume, empty), (flat, segmentation)])
    assert list(check.labels) == ["volume-1"]
    assert np.array_equal(check.labels["volume-1"][1], label.array)
    assert len(check.problems) == 2
    assert "no tumour" in check.problems[0] and "a CT is 3D" in check.problems[1]
    with pytest.raises(LiverTumorError, match="cannot be used"):
        logic.start_finetune([(volume, empty)], model="unused")


def test_finetune_from_scene_makes_a_new_model_version(scene, tiny_data, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_HOME", str(tmp_path / "home"))
    cases = []
    for number in (0, 1, 2):
        ct = read_ct(tiny_data / f"volume-{number}.nii")
        label = read_label(tiny_data / f"segmentation-{number}.nii", reference=ct.grid)
        volume = mrml.add_volume_node(scene, ct, f"case {number}")
        masks = [("liver", label.array == 1), ("tumor", label.array == 2)]
        cases.append((volume, mrml.add_segmentation_node(scene, volume, masks, f"case {number} truth")))
    events = []
    logic = LiverTumorCurriculumLogic(scene, python=sys.executable)
    out = logic.finetune(
        cases,
        model=str(tiny_model),
        out=tmp_path / "tuned",
        epochs=3,
        iterations=1,
        device="cpu",
        progress=lambda f, m: events.append(m),
    )
    card = json.loads((out / "card.json").read_text())
    assert out == tmp_path / "tuned" and card["parent"] == "tiny:1" and card["validation_before"]
    used = card["training_data"]["train_cases"] + card["training_data"]["validation_cases"]
    assert sorted(used) == ["000-case_0", "001-case_1", "002-case_2"]
    assert any("validation Dice" in message for message in events)


@pytest.fixture(scope="module")
def lesion_model(tiny_data, tmp_path_factory):
    from livertumor.lesions.model import SliceConfig
    from livertumor.lesions.networks import SEResNetConfig
    from livertumor.lesions.training import LesionTrainConfig, train_lesion_model

    encoder = SEResNetConfig(widths=(8, 16, 32, 64), stem_width=8, blocks=(1, 1, 1, 1))
    config = LesionTrainConfig(framework="joint", encoder=encoder, slices=SliceConfig(size=64), epochs=1, device="cpu")
    out = tmp_path_factory.mktemp("lesion") / "model"
    train_lesion_model(tiny_data, config, out, folds=0, name="tiny-lesions")
    return out


def test_classify_segments_table_override_and_export(scene, multi_lesion_case, lesion_model, tmp_path):
    volume, segmentation = _labels_in_scene(scene, multi_lesion_case)
    _, label = multi_lesion_case
    logic = LiverLesionClassifyLogic(scene, python=sys.executable)
    table = logic.classify(volume, segmentation, model=str(lesion_model), device="cpu")
    rows = mrml.table_rows(table)
    _, measured = measure_lesions(label, label=2)
    assert len(rows) == len(measured) >= 2
    names = {segmentation.GetSegmentation().GetSegment(r["segment"]).GetName() for r in rows}
    assert all(re.fullmatch(r"Liver (cyst|hemangioma|metastasis) \d+", name) for name in names)
    for row in rows:
        assert sum(row[f"p({c})"] for c in LESION_CLASSES) == pytest.approx(1.0, abs=1e-3)
    # the voxels of the split lesions are exactly the tumour segment's
    union = np.zeros(label.shape, bool)
    for row in rows:
        union |= mrml.segment_mask(segmentation, row["segment"], volume)
    assert np.array_equal(union, label.array == 2)
    logic.set_class(table, 0, "hemangioma")
    segment = segmentation.GetSegmentation().GetSegment(rows[0]["segment"])
    assert segment.GetName().startswith("Liver hemangioma") and "400210000" in segment.GetTerminology()
    assert mrml.table_rows(table)[0]["class"] == "hemangioma"
    with pytest.raises(LiverTumorError, match="unknown class"):
        logic.set_class(table, 0, "adenoma")
    logic.export(table, tmp_path / "lesions.json", tmp_path / "lesions.csv")
    assert json.loads((tmp_path / "lesions.json").read_text())["lesions"][0]["class"] == "hemangioma"
    assert (tmp_path / "lesions.csv").read_text().splitlines()[0].startswith("id,")


def test_classify_refuses_a_segmentation_without_lesions(scene, tiny_case, lesion_model):
    ct, label = tiny_case
    volume = mrml.add_volume_node(scene, ct, "ct")
    liver_only = mrml.add_segmentation_node(scene, volume, [("liver", label.array == 1)], "liver only")
    with pytest.raises(LiverTumorError, match="no lesion segment"):
        LiverLesionClassifyLogic(scene).start_classify(volume, liver_only, model=str(lesion_model))


@pytest.mark.parametrize("module", ["LiverTumorCurriculum", "LiverLesionClassify"])
def test_every_widget_the_code_uses_exists_in_the_ui_file(module):
    ui = REPO / module / "Resources" / "UI" / f"{module}.ui"
    names = {w.get("name") for w in ElementTree.parse(ui).iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / module / f"{module}.py").read_text()))
    assert used, "the widget uses no .ui names: the test would prove nothing"
    assert used <= names, f"{module}.py uses widgets missing from {ui.name}: {sorted(used - names)}"
    # parameterNodeWrapper bindings name widgets too (SlicerParameterName dynamic properties)
    bound = {
        p.find("string").text for p in ElementTree.parse(ui).iter("property") if p.get("name") == "SlicerParameterName"
    }
    assert bound, f"{ui.name} binds no widget to the parameter node"


def test_sample_data_segmentation_loads_on_its_ct(scene):
    """The Sample Data phantom: Slicer's storage nodes read the CT and its .seg.nrrd on one grid."""
    sample = REPO / "LiverTumorCurriculum" / "Resources" / "SampleData"
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(str(sample / "LiverTumorPhantom.nrrd"))
    assert reader.ReadData(volume)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "truth")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(sample / "LiverTumorPhantom.seg.nrrd"))
    assert storage.ReadData(segmentation)
    tumour = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Liver tumor")
    mask = mrml.segment_mask(segmentation, tumour, volume)
    assert mask.any() and mask.shape == mrml.volume_from_node(volume).shape
    assert "108369006" in segmentation.GetSegmentation().GetSegment(tumour).GetTerminology()


def test_logic_packages_import_without_qt_the_application_or_heavy_libraries():
    """Slicer imports every module at start-up: their Lib packages must not pull in Qt, torch, scipy,
    SimpleITK or the phantom code (imported where used)."""
    import subprocess

    heavy = ["qt", "torch", "scipy", "SimpleITK", "livertumor.phantom", "matplotlib"]
    code = (
        "import sys; sys.path[:0] = sys.argv[1:4]; "
        "import LiverTumorCurriculumLib, LiverLesionClassifyLib, LiverTumorAICommon.dependencies; "
        f"loaded = sorted(set({heavy!r}) & set(sys.modules)); assert not loaded, loaded"
    )
    folders = [str(REPO), str(REPO / "LiverTumorCurriculum"), str(REPO / "LiverLesionClassify")]
    result = subprocess.run([sys.executable, "-c", code, *folders], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---- Slicer 5.6-5.10 review fixes (issue 13) ------------------------------------------------------------


class _Slicer56Segment:
    """A vtkSegment as Slicer 5.6/5.8 has it: no SetTerminology/GetTerminology (5.10+)."""

    def __init__(self, segment) -> None:
        self._segment = segment

    def __getattr__(self, name: str):
        if name in ("SetTerminology", "GetTerminology", "HasTerminology"):
            raise AttributeError(f"vtkSegment has no {name} in Slicer 5.6")
        return getattr(self._segment, name)


def test_terms_are_written_with_the_tag_api_slicer_5_6_has(scene, tiny_case):
    _, segmentation = _labels_in_scene(scene, tiny_case)
    segment = segmentation.GetSegmentation().GetNthSegment(1)
    term = mrml.load_terms()["metastasis"]
    mrml.apply_term(_Slicer56Segment(segment), term)
    assert segment.GetName() == term.name
    tag = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag) and tag.get() == term.terminology


def test_segment_masks_are_read_without_temporary_nodes(scene, tiny_case):
    volume, segmentation = _labels_in_scene(scene, tiny_case)
    added = []
    tag = scene.AddObserver(scene.NodeAddedEvent, lambda caller, event: added.append(event))
    try:
        for index in range(2):
            mrml.segment_mask(segmentation, segmentation.GetSegmentation().GetNthSegmentID(index), volume)
    finally:
        scene.RemoveObserver(tag)
    assert added == []


def _translated(scene, offset_ras):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    for axis, value in enumerate(offset_ras):
        matrix.SetElement(axis, 3, value)
    transform.SetMatrixTransformToParent(matrix)
    return transform


def test_transformed_ct_gets_its_segmentation_once_transformed_and_lesions_in_world(scene, tiny_case):
    """A CT under a translation: the segmentation goes under the same transform with the CT's own
    geometry (not transformed twice), masks round-trip, and a lesion row jumps to the moved position."""
    ct, label = tiny_case
    volume = mrml.add_volume_node(scene, ct, "ct")
    offset = (10.0, -20.0, 30.0)
    volume.SetAndObserveTransformNodeID(_translated(scene, offset).GetID())
    segmentation = mrml.add_segmentation_node(scene, volume, [("tumor", label.array == 2)], "seg")
    assert segmentation.GetParentTransformNode() is volume.GetParentTransformNode()
    geometry = segmentation.GetSegmentation().GetConversionParameter("Reference image geometry")
    ijk_to_ras = [float(v) for v in geometry.split(";")[:16]]
    assert np.allclose(np.reshape(ijk_to_ras, (4, 4)), mrml._ijk_to_ras(volume))
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    assert np.array_equal(mrml.segment_mask(segmentation, segment_id, volume), label.array == 2)
    _, measured = measure_lesions(label, label=2)
    table = mrml.lesion_table(scene, [m.to_json() for m in measured], "lesions", volume)
    local = mrml.RAS_FROM_LPS @ np.asarray(measured[0].centroid_lps_mm)
    assert np.allclose(mrml.lesion_centre_ras(table, 0), local + offset, atol=0.01)


def test_segmentation_under_another_transform_is_refused(scene, tiny_case):
    volume, segmentation = _labels_in_scene(scene, tiny_case)
    segmentation.SetAndObserveTransformNodeID(_translated(scene, (5.0, 0.0, 0.0)).GetID())
    with pytest.raises(GridMismatchError, match="different transforms"):
        mrml.segment_mask(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), volume)


def test_lesion_tables_are_locked_with_titles_as_headers_and_rows_map_from_the_view(scene, multi_lesion_case):
    ct, label = multi_lesion_case
    volume = mrml.add_volume_node(scene, ct, "ct")
    _, measured = measure_lesions(label, label=2)
    table = mrml.lesion_table(scene, [m.to_json() for m in measured], "lesions", volume)
    # column names as headers: no editable first row holding them; read-only
    assert table.GetUseColumnTitleAsColumnHeader() and table.GetLocked()
    assert table.GetNodeReference(mrml.VOLUME_REFERENCE_ROLE) is volume
    count = len(measured)
    assert mrml.selected_table_rows([count - 1, 0, 0, count, -1], table) == [0, count - 1]
    assert mrml.selected_table_rows([], table) == []


def test_reader_survives_invalid_utf8_and_the_run_finishes(tmp_path):
    """A child that prints bytes no encoding reads: the line is kept (with replacement characters), the
    events still arrive, poll() ends."""
    from LiverTumorAICommon.process import LibraryProcess

    child = tmp_path / "python"
    child.write_text(
        '#!/bin/sh\nprintf \'caf\\351 \\377\\376 broken\\n%s{"progress": 0.5, "message": "half"}\\n\' '
        '"$LIVERTUMOR_EVENT_PREFIX"\n'
        "printf '%s\\n' \"$PYTHONIOENCODING\"\n"
    )
    child.chmod(0o755)
    events = []
    process = LibraryProcess(["segment"], events.append, python=str(child)).start()
    deadline = time.time() + 20
    while not process.poll():
        assert time.time() < deadline, "poll() never finished"
        time.sleep(0.02)
    process.check()
    assert events == [{"progress": 0.5, "message": "half"}]
    assert process.log[0].startswith("caf\ufffd") and "broken" in process.log[0]
    assert process.log[1] == "utf-8"  # the child is told to write UTF-8


def test_library_python_without_sys_executable(monkeypatch):
    from LiverTumorAICommon import process

    monkeypatch.delenv("LIVERTUMOR_PYTHON", raising=False)
    monkeypatch.setattr(process.sys, "executable", "")
    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    with pytest.raises(LiverTumorError, match="LIVERTUMOR_PYTHON"):
        process.library_python()
    monkeypatch.setattr(process.shutil, "which", lambda name: f"/opt/slicer/bin/{name}")
    assert process.library_python() == "/opt/slicer/bin/PythonSlicer"


def _script_job(tmp_path, text: str):
    """A Job whose process is a shell script standing in for ``python -m livertumor``."""
    from LiverTumorAICommon.jobs import Job
    from LiverTumorAICommon.process import LibraryProcess

    child = tmp_path / "python"
    child.write_text("#!/bin/sh\n" + text)
    child.chmod(0o755)
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return Job(LibraryProcess(["segment"], python=str(child)).start(), lambda done: "result", workdir)


def _run(controller):
    deadline = time.time() + 20
    while controller.poll():
        assert time.time() < deadline
        time.sleep(0.02)


def test_job_controller_success_failure_and_a_result_the_scene_refuses(tmp_path):
    from LiverTumorAICommon.jobs import JobController

    shown, errors = [], []

    def finished(job):
        if job.result == "result" and finished.refuse:
            raise LiverTumorError("the segmentation node was deleted meanwhile")
        return "3 lesions found"

    finished.refuse = False
    controller = JobController(lambda status: shown.append((status.running, status.message)), finished, errors.append)
    controller.start(_script_job(tmp_path, "exit 0\n"), "segmenting...")
    with pytest.raises(RuntimeError, match="already running"):
        controller.start(_script_job(tmp_path, "exit 0\n"), "again")
    controller.progress(1.7, "almost")
    assert controller.status.percent == 100
    _run(controller)
    assert shown[0] == (True, "segmenting...") and shown[-1] == (False, "3 lesions found") and not errors
    # the module was left and the result cannot be added: reported once, buttons back to idle
    finished.refuse = True
    controller.start(_script_job(tmp_path, "exit 0\n"), "segmenting...")
    _run(controller)
    assert not controller.running and shown[-1][0] is False
    assert errors == ["the segmentation node was deleted meanwhile"]
    # a failing run: its message, reported
    controller.start(_script_job(tmp_path, "echo 'livertumor segment: error: bad CT'; exit 2\n"), "segmenting...")
    _run(controller)
    assert "bad CT" in errors[-1] and not controller.running


def test_job_controller_cancel_reports_nothing(tmp_path):
    from LiverTumorAICommon.jobs import JobController

    errors = []
    controller = JobController(lambda status: None, lambda job: "done", errors.append)
    controller.start(_script_job(tmp_path, "sleep 30\n"), "running")
    controller.cancel()
    assert not controller.running and controller.status.message.startswith("Cancelled") and not errors
    assert controller.poll() is False  # the timer stops


def test_dependency_flow_consent_failure_and_version(monkeypatch):
    from LiverTumorAICommon import dependencies

    calls = []
    installer = dependencies.Installer(
        torch=lambda r: calls.append(("torch", r)), pip=lambda r: calls.append(("pip", r))
    )
    reports = []
    monkeypatch.setattr(dependencies, "missing_optional", lambda: [])
    monkeypatch.setattr(dependencies, "missing", lambda: [])
    assert dependencies.ensure(lambda m: pytest.fail("asked"), lambda: pytest.fail("installer"), reports.append)
    state = {"missing": ["torch", "scipy"]}
    monkeypatch.setattr(dependencies, "missing", lambda: list(state["missing"]))
    assert not dependencies.ensure(lambda m: False, lambda: pytest.fail("installed anyway"), reports.append)
    asked = []

    def install_all():
        state["missing"] = []
        return installer

    assert dependencies.ensure(lambda m: asked.append(m) or True, install_all, reports.append)
    assert "torch>=2.1" in asked[0] and calls == [("torch", ">=2.1"), ("pip", "scipy")] and not reports
    state["missing"] = ["torch"]

    def broken():
        raise OSError("no network")

    assert not dependencies.ensure(lambda m: True, broken, reports.append)
    assert len(reports) == 1 and "no network" in reports[0]
    assert not dependencies.ensure(lambda m: True, lambda: installer, reports.append)  # still missing after
    assert "still missing" in reports[-1]
    # OpenVINO is offered with the required packages (never alone); failing to get it is not fatal
    monkeypatch.setattr(dependencies, "missing_optional", lambda: ["openvino"])

    def no_openvino(requirements: str) -> None:
        if "openvino" in requirements:
            raise OSError("no wheel for this platform")

    offered, reports[:] = [], []
    assert dependencies.ensure(
        lambda m: offered.append(m) or True,
        lambda: state.update(missing=[]) or dependencies.Installer(torch=lambda r: None, pip=no_openvino),
        reports.append,
    )
    assert "openvino (optional" in offered[0] and "no wheel" in reports[0] and "runs with PyTorch" in reports[0]


def test_old_torch_counts_as_missing_and_the_minimum_matches_pyproject(monkeypatch):
    import importlib.metadata

    from LiverTumorAICommon import dependencies

    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"torch{dependencies.TORCH_REQUIREMENT}"' in pyproject
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.13.1+cpu")
    assert dependencies.missing()[0] == "torch"


def test_model_lists_offer_the_shipped_models():
    from LiverTumorAICommon import dependencies

    segmentation = dependencies.model_choices("segmentation")
    lesion = dependencies.model_choices("lesion")
    assert any(label.startswith("demo-curriculum:") for label, _ in segmentation)
    assert any(label.startswith("demo-lesions:") for label, _ in lesion)
    assert all(path for _, path in segmentation + lesion)


def test_terminology_is_registered_with_slicer():
    from LiverTumorAICommon.terminology import register_terminology

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = register_terminology(logic)
    names = vtk.vtkStringArray()
    logic.GetLoadedTerminologyNames(names)
    assert context in [names.GetValue(i) for i in range(names.GetNumberOfValues())]


@pytest.mark.parametrize("module", ["LiverTumorCurriculum", "LiverLesionClassify"])
def test_parameter_nodes_carry_the_module_name_and_volume_selectors_hide_label_maps(module):
    """ScriptedLoadableModuleLogic names the parameter node after its class minus "Logic"; the
    parameter logic must say the module's own name. CT selectors must not offer label maps (a
    vtkMRMLScalarVolumeNode subclass) unless showChildNodeTypes is off."""
    import ast

    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    logic = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterLogic"))
    assigned = [
        n.value.value
        for n in ast.walk(logic)
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "self.moduleName"
    ]
    assert assigned == [module]
    ui = ElementTree.parse(REPO / module / "Resources" / "UI" / f"{module}.ui")
    for widget in ui.iter("widget"):
        properties = {p.get("name"): p for p in widget.findall("property")}
        types = properties.get("nodeTypes")
        if types is not None and "vtkMRMLScalarVolumeNode" in [s.text for s in types.iter("string")]:
            assert properties["showChildNodeTypes"].find("bool").text == "false", widget.get("name")


def test_only_prefixed_lines_are_events_so_printed_text_cannot_forge_one(tmp_path):
    """Issue 15 item 9: a card name holding a newline and a JSON line made the child print a forged
    ``saved`` event. Lines without the run's random prefix are log text, whatever they hold."""
    from LiverTumorAICommon.process import LibraryProcess

    child = tmp_path / "python"
    child.write_text(
        "#!/bin/sh\n"
        'echo \'{"event": "saved", "model": "/tmp/attacker"}\'\n'
        'echo "${LIVERTUMOR_EVENT_PREFIX}{\\"progress\\": 1.0, \\"message\\": \\"done\\"}"\n'
    )
    child.chmod(0o755)
    process = LibraryProcess(["finetune"], python=str(child)).start()
    deadline = time.time() + 20
    while not process.poll():
        assert time.time() < deadline
        time.sleep(0.02)
    assert process.events == [{"progress": 1.0, "message": "done"}]
    assert '{"event": "saved", "model": "/tmp/attacker"}' in process.log


def test_seg_nrrd_written_by_the_library_opens_in_slicer_with_named_segments(scene, tiny_case, tmp_path):
    from livertumor.io import write_segmentation

    ct, label = tiny_case
    write_segmentation(label, tmp_path / "case.seg.nrrd")
    volume = mrml.add_volume_node(scene, ct, "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "read")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "case.seg.nrrd"))
    assert storage.ReadData(segmentation)
    segments = segmentation.GetSegmentation()
    names = [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]
    assert names == ["Liver", "Liver tumor"]
    tumour = segments.GetSegmentIdBySegmentName("Liver tumor")
    assert np.array_equal(mrml.segment_mask(segmentation, tumour, volume), label.array == 2)
    tag = vtk.reference("")
    segment = segments.GetSegment(tumour)
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag) and "108369006" in tag.get()


def test_classify_in_slicer_keeps_every_component_of_the_users_segments(scene, tiny_case, lesion_model):
    """The command line skips lesions under 3 mm by default; in Slicer the user's segments are the lesions,
    so a one-voxel component is classified too (it once made the Logic fail with a KeyError)."""
    ct, label = tiny_case
    fine = Grid(ct.grid.shape, (1.0, 1.0, 1.0), ct.grid.origin, ct.grid.direction)  # one voxel: 1.2 mm across
    labels = label.array.copy()
    liver = np.argwhere((labels == 1) & (np.cumsum(labels == 2) == 0).reshape(labels.shape))
    labels[tuple(liver[len(liver) // 2])] = 2
    volume = mrml.add_volume_node(scene, Volume(ct.array, fine), "fine")
    segmentation = mrml.add_segmentation_node(scene, volume, [("liver", labels == 1), ("tumor", labels == 2)], "s")
    table = LiverLesionClassifyLogic(scene, python=sys.executable).classify(
        volume, segmentation, model=str(lesion_model), device="cpu"
    )
    _, measured = measure_lesions(Volume(labels, fine), label=2)
    assert len(mrml.table_rows(table)) == len(measured) and min(m.voxels for m in measured) == 1
