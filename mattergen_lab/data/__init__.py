"""Data loading: in-memory crystal datasets and their loaders (spec §1.3, §1.6), and the number-of-atoms distribution.

Three sources:

* :func:`load_csv` (:mod:`~mattergen_lab.data.csv_loader`): any CSV with a ``cif`` column. Each CIF is parsed and
  standardised the way MatterGen's ``csv-to-dataset`` does (primitive cell, then Niggli). The parsed arrays are
  cached on disk, so only the first load is slow.
* :func:`load_mattergen_cache` (:mod:`~mattergen_lab.data.mp20`): MatterGen's own preprocessed cache (``pos.npy``,
  ``cell.npy``, ...).
* :func:`load_mp20` (:mod:`~mattergen_lab.data.mp20`): the MP-20 splits found in the data directory (see
  ``shared/data/README.md``).

Whatever the source, :meth:`CrystalDataset.get_batch` (:mod:`~mattergen_lab.data.container`) applies MatterGen's
load-time transforms: fractional coordinates wrapped to ``[0, 1)``, the lattice replaced by its symmetric polar
factor, and a ``chemical_system`` string per crystal.
"""

from mattergen_lab.data.container import CrystalDataset, ParseFailure, chemical_system
from mattergen_lab.data.csv_loader import DEFAULT_PROPERTY_COLUMNS, load_csv
from mattergen_lab.data.mp20 import MP20_PROPERTIES, MP20_SPLITS, load_mattergen_cache, load_mp20
from mattergen_lab.data.num_atoms import NUM_ATOMS_TABLES, NumAtomsDistribution
from mattergen_lab.data.paths import (
    CACHE_ENV_VAR,
    DATA_ENV_VAR,
    DataNotFoundError,
    default_cache_dir,
    default_data_dir,
    resolve_data_dir,
)

__all__ = [
    "CACHE_ENV_VAR",
    "DATA_ENV_VAR",
    "DEFAULT_PROPERTY_COLUMNS",
    "MP20_PROPERTIES",
    "MP20_SPLITS",
    "NUM_ATOMS_TABLES",
    "CrystalDataset",
    "DataNotFoundError",
    "NumAtomsDistribution",
    "ParseFailure",
    "chemical_system",
    "default_cache_dir",
    "default_data_dir",
    "load_csv",
    "load_mattergen_cache",
    "load_mp20",
    "resolve_data_dir",
]
