"""Three-stage against another schema, paired by initialisation, over the runs of several curriculum.py folders.

    python benchmarks/curriculum_pool.py OUT [OUT ...] [--schema naive] [--seeds 0 1 2 3 4]

Each folder holds one recipe's runs (``result-SCHEMA-seedN.json``, as ``curriculum.py`` writes them); a
seed in another folder is another initialisation (another head width, say), so every (folder, seed)
pairs the two schemas' runs from the same starting weights; a seed without both runs is left out. Prints
the paired table of ``curriculum.py`` (``paired_gaps``) for each folder, for all folders pooled, and for the
pooled runs where both schemas marked tumour (test DG > 0), which leaves out what a dead start does to one
schema and not the other.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from curriculum import paired_gaps, result_path  # the benchmarks folder is the script's path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", type=Path, nargs="+", help="curriculum.py --out folders")
    parser.add_argument("--schema", default="naive", help="the schema three-stage is paired with")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    args = parser.parse_args()
    schemas = ["three-stage", args.schema]
    rows, groups = [], []
    for index, out in enumerate(args.outs):
        # one key per initialisation that both schemas ran, so the counts below are of pairs
        ran = [seed for seed in args.seeds if all(result_path(out, schema, seed).exists() for schema in schemas)]
        keys = [index * 1000 + seed for seed in ran]
        for schema in schemas:
            for seed, key in zip(ran, keys):
                rows.append({**json.loads(result_path(out, schema, seed).read_text()), "seed": key})
        groups.append((str(out), keys))
    every = [key for _, keys in groups for key in keys]
    dg = {(row["schema"], row["seed"]): row["dg"] for row in rows}
    started = [key for key in every if all(dg.get((schema, key), 0) > 0 for schema in schemas)]
    groups += [("all folders", every), ("all folders, both schemas started", started)]
    for label, keys in groups:
        table = paired_gaps(rows, schemas, keys)
        print(f"{label}: {len(keys)} initialisations")
        print("\n".join(table) if table else "(fewer than two pairs)", end="\n\n")


if __name__ == "__main__":
    main()
