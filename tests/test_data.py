"""Data loading on the real MP-20 files: counts, CIF parsing vs MatterGen's cache, disk cache, batches."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mattergen_lab.constants import ALEX_MP_20_NUM_ATOMS
from mattergen_lab.data import (
    CrystalDataset,
    DataNotFoundError,
    NumAtomsDistribution,
    ParseFailure,
    default_cache_dir,
    default_data_dir,
    load_csv,
    load_mattergen_cache,
    load_mp20,
)
from mattergen_lab.data import csv_loader as csv_loader_module  # where load_csv looks up structure_from_cif
from mattergen_lab.data import paths as paths_module

BROKEN_ROW = 7  # 0-based data row of the broken CIF in the small CSV
N_GOOD = 50

BROKEN_CIF = "data_broken\n_cell_length_a 3.0\nloop_\n_atom_site_label\n_atom_site_fract_x\n Xx1 0.1\n"


def gram(lattice: np.ndarray) -> np.ndarray:
    """``L Lᵀ`` of ``(..., 3, 3)`` lattices: invariant under global rotations."""
    return lattice @ np.swapaxes(lattice, -1, -2)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its parsed-CSV cache under its own tmp_path."""
    cache = tmp_path / "processed"
    monkeypatch.setenv("MATTERGEN_LAB_CACHE", str(cache))
    return cache


def _write_small_csv(src: Path, dest: Path) -> None:
    """The first 50 rows of ``src`` with one broken-CIF row inserted as data row ``BROKEN_ROW``."""
    df = pd.read_csv(src, nrows=N_GOOD, dtype={"material_id": str})
    broken = df.iloc[[0]].copy()
    broken["material_id"] = "broken-1"
    broken["cif"] = BROKEN_CIF
    out = pd.concat([df.iloc[:BROKEN_ROW], broken, df.iloc[BROKEN_ROW:]], ignore_index=True)
    out.to_csv(dest, index=False, quoting=csv.QUOTE_NONNUMERIC)


@pytest.fixture(scope="module")
def small_csv(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "test_small.csv"
    _write_small_csv(data_dir / "mp_20" / "test.csv", path)
    return path


@pytest.fixture(scope="module")
def small_parsed(small_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> CrystalDataset:
    return load_csv(small_csv, cache=False, cache_dir=tmp_path_factory.mktemp("unused"))


@pytest.fixture(scope="module")
def val(data_dir: Path) -> CrystalDataset:
    return load_mp20("val", data_dir=data_dir)


@pytest.fixture(scope="module")
def test_split(data_dir: Path) -> CrystalDataset:
    return load_mp20("test", data_dir=data_dir)


# ---------------------------------------------------------------------------------------------- paths


def test_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERGEN_LAB_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("MATTERGEN_LAB_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="nope"):
        default_data_dir()


def test_data_dir_not_found_lists_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATTERGEN_LAB_DATA", raising=False)
    monkeypatch.setattr(paths_module, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as info:
        default_data_dir()
    message = str(info.value)
    assert str(tmp_path / "shared" / "data") in message
    assert str(tmp_path / "home" / ".cache" / "mattergen-lab" / "data") in message
    assert "MATTERGEN_LAB_DATA" in message
    (tmp_path / "home" / ".cache" / "mattergen-lab" / "data").mkdir(parents=True)
    assert default_data_dir() == tmp_path / "home" / ".cache" / "mattergen-lab" / "data"


def test_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_dir() == tmp_path / "processed"
    monkeypatch.delenv("MATTERGEN_LAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "mattergen-lab" / "processed"


# ---------------------------------------------------------------------------------------------- MP-20 / cache


def test_val_split_counts(val: CrystalDataset, data_dir: Path) -> None:
    assert len(val) == 9047
    assert int(val.num_atoms.sum()) == len(val.atom_types) == len(val.frac_coords) == 92454
    assert val.lattice.shape == (9047, 3, 3)
    assert val.num_atoms.min() == 1 and val.num_atoms.max() == 20
    assert sorted(val.properties) == sorted(["dft_band_gap", "dft_bulk_modulus", "dft_mag_density", "formation_energy_per_atom"])
    table = pd.read_csv(data_dir / "mp_20" / "val.csv", usecols=["material_id", "num_atoms", "dft_bulk_modulus", "dft_mag_density", "formation_energy_per_atom"])
    assert list(val.ids) == table["material_id"].tolist()
    np.testing.assert_array_equal(val.num_atoms, table["num_atoms"].to_numpy())
    assert int(np.isnan(val.properties["dft_bulk_modulus"]).sum()) == 7895
    assert int(np.isnan(val.properties["dft_mag_density"]).sum()) == 353
    np.testing.assert_allclose(val.properties["formation_energy_per_atom"], table["formation_energy_per_atom"], rtol=0, atol=1e-12)


def test_train_cache_without_positions_is_explained(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="train_partial_structures.csv") as info:
        load_mattergen_cache(data_dir / "mp_20" / "mattergen_cache" / "train")
    assert "pos.npy" in str(info.value)


def test_unknown_split(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        load_mp20("bogus", data_dir=data_dir)


def test_cached_crystals_match_their_cifs(small_parsed: CrystalDataset, test_split: CrystalDataset) -> None:
    """The same material parsed from test.csv and read from MatterGen's cache is the same crystal."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    assert len(small_parsed) == N_GOOD
    rows = [list(test_split.ids).index(m) for m in small_parsed.ids]
    assert rows == list(range(N_GOOD))  # test.csv and the cache share the order
    ref = test_split.subset(rows)
    np.testing.assert_array_equal(small_parsed.num_atoms, ref.num_atoms)
    for i in range(N_GOOD):
        a = small_parsed.atom_types[small_parsed.ptr[i] : small_parsed.ptr[i + 1]]
        b = ref.atom_types[ref.ptr[i] : ref.ptr[i + 1]]
        assert sorted(a) == sorted(b)
    np.testing.assert_allclose(np.abs(np.linalg.det(small_parsed.lattice)), np.abs(np.linalg.det(ref.lattice)), rtol=1e-6)
    # Re-reducing an already reduced cell can land on an equivalent Niggli setting (about 2 % of MP-20), so the
    # Gram matrices agree for most crystals, and the structures all match.
    same_gram = np.abs(gram(small_parsed.lattice) - gram(ref.lattice)).max(axis=(1, 2)) < 1e-3
    assert same_gram.sum() >= 45
    # The batch lattice (L Lᵀ)^{1/2} depends on the Gram matrix only, so it agrees exactly there.
    idx = np.flatnonzero(same_gram)
    torch.testing.assert_close(
        small_parsed.get_batch(idx, dtype=torch.float64).lattice, ref.get_batch(idx, dtype=torch.float64).lattice, atol=1e-4, rtol=0
    )
    matcher = StructureMatcher()
    ours = small_parsed.get_batch(slice(None), dtype=torch.float64).to_structures()
    theirs = ref.get_batch(slice(None), dtype=torch.float64).to_structures()
    assert all(matcher.fit(s, t) for s, t in zip(ours, theirs))


def test_train_split_uses_mattergen_properties(data_dir: Path, tmp_path: Path) -> None:
    """Train = train_partial_structures.csv, with property values and cells as in MatterGen's train cache."""
    mp20 = tmp_path / "data" / "mp_20"
    mp20.mkdir(parents=True)
    full = pd.read_csv(data_dir / "mp_20" / "train_partial_structures.csv", dtype={"material_id": str})
    rows = list(range(10)) + list(range(2705, 2712)) + list(range(3375, 3381))  # includes rows 2708 and 3378
    full.iloc[rows].to_csv(mp20 / "train_partial_structures.csv", index=False)
    (mp20 / "train_no_positions.csv").symlink_to(data_dir / "mp_20" / "train_no_positions.csv")

    train = load_mp20("train", data_dir=mp20.parent)
    assert len(train) == len(rows) and not train.failures
    cache = data_dir / "mp_20" / "mattergen_cache" / "train"
    ids = list(np.load(cache / "structure_id.npy"))
    j = np.array([ids.index(m) for m in train.ids])
    np.testing.assert_array_equal(train.num_atoms, np.load(cache / "num_atoms.npy")[j])
    np.testing.assert_allclose(gram(train.lattice), gram(np.load(cache / "cell.npy")[j]), atol=1e-3)
    for name in ["formation_energy_per_atom", "dft_band_gap", "dft_bulk_modulus", "dft_mag_density"]:
        expected = np.array(json.loads((cache / f"{name}.json").read_text())["values"], dtype=float)[j]
        np.testing.assert_allclose(train.properties[name], expected, rtol=0, atol=1e-12, equal_nan=True)
    # band_gap is empty in the CSV for MPTS-52 rows; here it is filled from MatterGen's values
    assert not np.isnan(train.properties["dft_band_gap"]).any()
    # rows 2708 / 3378: the CSV's formation energy (another MP version) differs; MatterGen's is used
    k = rows.index(2708)
    assert abs(full["formation_energy_per_atom"].iloc[2708] - train.properties["formation_energy_per_atom"][k]) > 0.05


# ---------------------------------------------------------------------------------------------- CSV loading


def test_broken_row_is_reported(small_csv: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mattergen_lab.data"):
        ds = load_csv(small_csv)
    assert len(ds) == N_GOOD
    assert len(ds.failures) == 1
    failure = ds.failures[0]
    assert isinstance(failure, ParseFailure)
    assert failure.row == BROKEN_ROW and failure.material_id == "broken-1"
    assert "broken-1" in failure.reason or "could not parse" in failure.reason
    assert "broken-1" not in set(ds.ids)
    assert any("1 of 51 rows" in r.getMessage() for r in caplog.records)


def test_second_load_hits_disk_cache(small_csv: Path, _cache_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_csv(small_csv)
    files = sorted(p.name for p in (_cache_in_tmp / "csv").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")

    def no_parsing(*args, **kwargs):
        raise AssertionError("the parser must not run on a cache hit")

    monkeypatch.setattr(csv_loader_module, "structure_from_cif", no_parsing)
    second = load_csv(small_csv)
    np.testing.assert_array_equal(second.atom_types, first.atom_types)
    np.testing.assert_array_equal(second.frac_coords, first.frac_coords)
    np.testing.assert_array_equal(second.lattice, first.lattice)
    assert list(second.ids) == list(first.ids)
    assert second.failures == first.failures
    for key in first.properties:
        np.testing.assert_array_equal(second.properties[key], first.properties[key])

    # Different options are a different cache entry: the (failing) parser runs, and every row is reported.
    other = load_csv(small_csv, property_columns=["formation_energy_per_atom"])
    assert len(other) == 0 and len(other.failures) == N_GOOD + 1
    assert "must not run" in other.failures[0].reason
    # A modified file is a miss too.
    os.utime(small_csv, ns=(small_csv.stat().st_atime_ns, small_csv.stat().st_mtime_ns + 10**9))
    assert len(load_csv(small_csv)) == 0


def test_csv_errors_name_the_problem(tmp_path: Path, small_csv: Path) -> None:
    no_cif = tmp_path / "no_cif.csv"
    pd.DataFrame({"material_id": ["a"], "structure": ["x"]}).to_csv(no_cif, index=False)
    with pytest.raises(ValueError, match="'cif'") as info:
        load_csv(no_cif)
    assert "no_cif.csv" in str(info.value)
    with pytest.raises(ValueError, match="'hardness'") as info:
        load_csv(small_csv, property_columns=["hardness"])
    assert "test_small.csv" in str(info.value)
    with pytest.raises(ValueError, match="'formula'"):
        load_csv(small_csv, property_columns=["formula"])  # not numeric
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_csv(tmp_path / "missing.csv")


def test_csv_property_mapping(small_parsed: CrystalDataset, test_split: CrystalDataset) -> None:
    assert sorted(small_parsed.properties) == sorted(test_split.properties)
    for name, values in small_parsed.properties.items():
        np.testing.assert_allclose(values, test_split.properties[name][:N_GOOD], rtol=0, atol=1e-12, equal_nan=True)


# ---------------------------------------------------------------------------------------------- batches


def test_batch_transforms(val: CrystalDataset) -> None:
    from pymatgen.core import Composition

    idx = [0, 5, 17, 4000, 9046]
    batch = val.get_batch(idx)
    assert batch.num_crystals == 5 and batch.frac_coords.dtype == torch.float32
    torch.testing.assert_close(batch.lattice, batch.lattice.transpose(1, 2), rtol=0, atol=0)
    assert bool((batch.frac_coords >= 0).all()) and bool((batch.frac_coords < 1).all())
    assert batch.num_atoms.tolist() == val.num_atoms[idx].tolist()
    # The symmetric lattice has the same Gram matrix, i.e. it is the same crystal up to a rotation.
    b64 = val.get_batch(idx, dtype=torch.float64)
    np.testing.assert_allclose(gram(b64.lattice.numpy()), gram(val.lattice[idx]), atol=1e-9)
    assert batch.properties["formation_energy_per_atom"].dtype == torch.float32
    np.testing.assert_allclose(batch.properties["dft_band_gap"].numpy(), val.properties["dft_band_gap"][idx], rtol=1e-6)
    expected = [Composition(s.composition).chemical_system for s in b64.to_structures()]
    assert batch.properties["chemical_system"] == expected
    assert batch.properties["chemical_system"][0] == "Hg-Mg-Tm"


def test_iter_batches(val: CrystalDataset) -> None:
    small = val.subset(range(103))
    batches = list(small.iter_batches(25))
    assert [len(b) for b in batches] == [25, 25, 25, 25, 3]
    assert sum(int(b.num_atoms.sum()) for b in batches) == int(small.num_atoms.sum())
    assert [len(b) for b in small.iter_batches(25, drop_last=True)] == [25] * 4
    runs = [
        [b.properties["formation_energy_per_atom"] for b in small.iter_batches(25, shuffle=True, generator=torch.Generator().manual_seed(3))]
        for _ in range(2)
    ]
    for x, y in zip(*runs):
        torch.testing.assert_close(x, y, equal_nan=True)
    shuffled = torch.cat(runs[0]).sort().values
    torch.testing.assert_close(shuffled, torch.as_tensor(small.properties["formation_energy_per_atom"], dtype=torch.float32).sort().values)
    with pytest.raises(ValueError, match="batch_size=0"):
        next(small.iter_batches(0))


def test_split_subset_concat(val: CrystalDataset) -> None:
    parts = val.split([0.8, 0.1, 0.1], seed=1)
    assert [len(p) for p in parts] == [7238, 905, 904]  # floor sizes 7237/904/904; the 2 left over go to the first parts
    all_ids = np.concatenate([p.ids for p in parts])
    assert len(set(all_ids)) == len(val) == len(all_ids)
    again = val.split([0.8, 0.1, 0.1], seed=1)
    assert list(again[2].ids) == list(parts[2].ids)
    assert list(val.split([0.8, 0.1, 0.1], seed=2)[2].ids) != list(parts[2].ids)
    train, held = val.split_validation(0.05, seed=0)
    assert (len(train), len(held)) == (8595, 452)
    assert not set(train.ids) & set(held.ids)
    with pytest.raises(ValueError, match="1.5"):
        val.split_validation(1.5)
    with pytest.raises(ValueError, match=r"\[10, 20\]"):
        val.split([10, 20])

    sub = val.subset([3, 1])
    assert list(sub.ids) == [val.ids[3], val.ids[1]]
    np.testing.assert_array_equal(sub.atom_types, np.concatenate([val.atom_types[val.ptr[3] : val.ptr[4]], val.atom_types[val.ptr[1] : val.ptr[2]]]))
    both = CrystalDataset.concat([sub, val.subset([0])])
    assert len(both) == 3 and both.ptr[-1] == len(both.atom_types)
    with pytest.raises(IndexError, match="9047"):
        val.subset([9047])


def test_concat_fills_missing_properties_with_nan(val: CrystalDataset) -> None:
    one = val.subset([0, 1])
    bare = CrystalDataset(one.atom_types, one.frac_coords, one.lattice, one.num_atoms, ["x", "y"])
    both = CrystalDataset.concat([one, bare])
    assert np.isnan(both.properties["dft_band_gap"][2:]).all()
    assert both.properties["dft_band_gap"][1] == pytest.approx(3.5845)


# ---------------------------------------------------------------------------------------------- num atoms


def test_num_atoms_table() -> None:
    dist = NumAtomsDistribution.from_table("ALEX_MP_20")
    assert sum(dist.probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert dist.support == list(range(1, 21))
    assert dist.probs[4] == pytest.approx(0.163634, abs=1e-5)
    draws = dist.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.long and draws.shape == (20_000,)
    freq = torch.bincount(draws, minlength=21).double() / 20_000
    for n, p in ALEX_MP_20_NUM_ATOMS.items():
        assert abs(float(freq[n]) - p) < 0.01, n
    again = dist.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    with pytest.raises(ValueError, match="'MP_21'"):
        NumAtomsDistribution.from_table("MP_21")


def test_num_atoms_roundtrip_and_counts(val: CrystalDataset) -> None:
    dist = val.num_atoms_distribution()
    assert sum(dist.probs.values()) == pytest.approx(1.0)
    assert dist.probs[4] == pytest.approx(float((val.num_atoms == 4).mean()))
    restored = NumAtomsDistribution.from_dict(json.loads(json.dumps(dist.to_dict())))
    assert restored == dist
    assert NumAtomsDistribution.from_counts([2, 2, 3]).probs == {2: pytest.approx(2 / 3), 3: pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="0"):
        NumAtomsDistribution.from_counts([0, 2])
