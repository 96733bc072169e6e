"""In-memory crystal datasets and their loaders (spec §1.3, §1.6).

Three sources:

* :func:`load_csv`: any CSV with a ``cif`` column. Each CIF is parsed and standardised the way MatterGen's
  ``csv-to-dataset`` does (primitive cell, then Niggli). The parsed arrays are cached on disk, so only the
  first load is slow.
* :func:`load_mattergen_cache`: MatterGen's own preprocessed cache (``pos.npy``, ``cell.npy``, ...).
* :func:`load_mp20`: the MP-20 splits found in the data directory (see ``shared/data/README.md``).

Whatever the source, :meth:`CrystalDataset.get_batch` applies MatterGen's load-time transforms: fractional
coordinates wrapped to ``[0, 1)``, the lattice replaced by its symmetric polar factor, and a
``chemical_system`` string per crystal.

This module was split; it re-exports every name it had, from where each now lives:

* :mod:`mattergen_lab.data.container`: :class:`CrystalDataset`, :class:`ParseFailure`, :func:`chemical_system`;
* :mod:`mattergen_lab.data.csv_loader`: :func:`load_csv`, :data:`DEFAULT_PROPERTY_COLUMNS` and the parse cache;
* :mod:`mattergen_lab.data.mp20`: :func:`load_mattergen_cache`, :func:`load_mp20`, :data:`MP20_PROPERTIES`,
  :data:`MP20_SPLITS`.

A test that monkeypatches a name a loader looks up (e.g. ``structure_from_cif``) patches it in the module that
now holds the loader.
"""

from mattergen_lab.data.container import (  # noqa: F401
    CrystalDataset,
    Indices,
    ParseFailure,
    _element_symbols,
    chemical_system,
)
from mattergen_lab.data.csv_loader import (  # noqa: F401
    _CACHE_FORMAT,
    _MIN_ROWS_FOR_POOL,
    DEFAULT_PROPERTY_COLUMNS,
    ParsedRow,
    _cache_files,
    _csv_cache_key,
    _parse_row,
    _parse_rows,
    _property_column_map,
    _property_values,
    _read_cache,
    _report_failures,
    _write_cache,
    load_csv,
)
from mattergen_lab.data.mp20 import (  # noqa: F401
    MP20_PROPERTIES,
    MP20_SPLITS,
    _load_mp20_train,
    load_mattergen_cache,
    load_mp20,
)
