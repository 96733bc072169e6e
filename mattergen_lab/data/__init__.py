"""Data loading: crystal datasets (CSV, MatterGen cache, MP-20) and the number-of-atoms distribution."""

from mattergen_lab.data.dataset import (
    DEFAULT_PROPERTY_COLUMNS,
    MP20_PROPERTIES,
    MP20_SPLITS,
    CrystalDataset,
    ParseFailure,
    chemical_system,
    load_csv,
    load_mattergen_cache,
    load_mp20,
)
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
