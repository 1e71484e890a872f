"""Headless batch segmentation in Slicer, built on the module's Logic:

    Slicer --no-main-window --python-script LiverTumorCurriculum/Scripts/batch_segment.py -- \\
        --input CT_FOLDER --output OUT_FOLDER [--model NAME] [--device auto] [--quality fast]

Each CT (NIfTI, NRRD, MHA) is loaded as a volume node, segmented out of process, and saved as
``NAME.seg.nrrd`` (a Slicer segmentation on the CT's grid, with terminology) plus ``NAME_lesions.csv``.
Outside Slicer the same work is ``livertumor segment CT_FOLDER -o OUT_FOLDER``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The module's Lib and LiverTumorAICommon: siblings in the installed extension, one folder up in the source.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

from LiverTumorCurriculumLib import LiverTumorCurriculumLogic  # noqa: E402

from livertumor.io import volume_stem, volume_suffix  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Segment liver tumours in every CT of a folder (Slicer batch)")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quality", choices=("quality", "fast"), default="quality")
    args = parser.parse_args(argv)

    import slicer

    args.output.mkdir(parents=True, exist_ok=True)
    logic = LiverTumorCurriculumLogic()
    failures = 0
    for path in sorted(p for p in args.input.iterdir() if p.is_file() and volume_suffix(p)):
        name = volume_stem(path)
        volume = slicer.util.loadVolume(str(path))
        try:
            result = logic.start_segment(volume, args.model, args.device, args.quality).wait()
        except Exception as error:  # one bad case must not stop the batch
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        slicer.util.saveNode(result.segmentation, str(args.output / f"{name}.seg.nrrd"))
        slicer.util.saveNode(result.table, str(args.output / f"{name}_lesions.csv"))
        print(f"{path} -> {args.output / (name + '.seg.nrrd')}")
        slicer.mrmlScene.Clear()
    return 1 if failures else 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    import slicer

    slicer.util.exit(code)
