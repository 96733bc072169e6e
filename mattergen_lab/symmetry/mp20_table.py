"""Builds ``mp20_templates.json``: MP-20's Wyckoff templates and the test split's space-group histogram.

    python -m mattergen_lab.symmetry.mp20_table            # reads the data directory (MATTERGEN_LAB_DATA or ../shared/data)

Each crystal is analysed by spglib (symprec 0.1 Å, angle tolerance 5°, the tolerance of our symmetry metrics): its
space group, and for each crystallographic orbit the Wyckoff letter. A template is ``"<group>:<letters>"`` with the
letters sorted (``"225:ab"``); its conventional-cell atom count follows from the multiplicities. ``patterns`` counts
the same templates with their element patterns (``"225:ab|c"``: orbits a and b hold one element, c another). Templates come from
the train structures with coordinates and the val split (the splits the bundled models were trained on); the test
split gives only the reference histogram of space groups.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

from mattergen_lab.symmetry.templates import TABLE_PATH, WyckoffTemplate

SYMPREC = 0.1
ANGLE_TOLERANCE = 5.0


def template_of(lattice: np.ndarray, frac_coords: np.ndarray, atomic_numbers: np.ndarray,
                symprec: float = SYMPREC, *, elements: bool = False) -> WyckoffTemplate | None:
    """The Wyckoff template of one crystal (``None`` when spglib finds no symmetry); ``elements=True``: with its
    element pattern, which orbits share an element (``"225:ab|c"``)."""
    import spglib

    data = spglib.get_symmetry_dataset((lattice, frac_coords, atomic_numbers), symprec=symprec,
                                       angle_tolerance=ANGLE_TOLERANCE)
    if data is None:
        return None
    orbits = sorted(set(int(i) for i in data.equivalent_atoms))
    if not elements:
        return WyckoffTemplate(int(data.number), tuple(sorted(data.wyckoffs[i] for i in orbits)))
    by_element: dict[int, list[str]] = collections.defaultdict(list)
    for i in orbits:
        by_element[int(atomic_numbers[i])].append(data.wyckoffs[i])
    return WyckoffTemplate.parse(f"{int(data.number)}:" + "|".join("".join(v) for v in by_element.values()))


def build(data_dir: str | None = None) -> dict:
    from mattergen_lab.data import load_mp20

    counts: collections.Counter[str] = collections.Counter()
    patterns: collections.Counter[str] = collections.Counter()
    test_groups: collections.Counter[int] = collections.Counter()
    sources = {}
    for split in ("train", "val", "test"):
        ds = load_mp20(split, data_dir=data_dir)
        sources[split] = len(ds)
        for i in range(len(ds)):
            a, b = ds.ptr[i], ds.ptr[i + 1]
            t = template_of(ds.lattice[i], ds.frac_coords[a:b], ds.atom_types[a:b], elements=True)
            if t is None:
                continue
            if split == "test":
                test_groups[t.space_group] += 1
            else:
                counts[str(t.letters_only)] += 1
                patterns[str(t)] += 1
    return {
        "about": "MP-20 Wyckoff templates (spglib symprec 0.1 A, 5 deg): counts over the train structures with "
                 "coordinates and the val split; test_space_groups: the test split's space-group histogram. "
                 "Built by python -m mattergen_lab.symmetry.mp20_table.",
        "crystals": sources,
        "templates": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        # the same crystals' templates with their element patterns (which orbits share an element): "225:ab|c"
        "patterns": dict(sorted(patterns.items(), key=lambda kv: (-kv[1], kv[0]))),
        "test_space_groups": {str(k): v for k, v in sorted(test_groups.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(TABLE_PATH))
    args = parser.parse_args(argv)
    table = build(args.data_dir)
    Path(args.out).write_text(json.dumps(table, indent=0) + "\n")
    n = sum(table["templates"].values())
    print(f"{len(table['templates'])} templates from {n} crystals -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
