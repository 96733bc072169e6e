"""Upper bounds on every resource a request can ask for, checked before any work starts (one place, named).

Each bound is far above what the official models and this project's runs use, and far below what makes a machine
swap, hang or ask the allocator for terabytes. The message of :func:`check_at_most` names the value, the bound and,
where raising it is legitimate, how. Bounds that live beside the code they protect (samples per request in
:mod:`mattergen_lab.sampling.request`, the relaxation's atom cap in :mod:`mattergen_lab.evaluation.relax`) keep
their names there; this module holds the rest, among them the atoms per crystal and per batch that both a request
and a variation's parent are checked against.
"""

from __future__ import annotations

import math
from typing import Any

# ----------------------------------------------------------------------------------------------- sampling
#: Most predictor steps of one run: ten times the official 1,000. The noise schedule and every frame are
#: allocated per step (``--steps 1000000000`` grew past 6 GB in 33 s before this bound).
MAX_NUM_STEPS = 10_000
#: Most Langevin corrector steps before each predictor step (official: 1).
MAX_CORRECTOR_STEPS = 10
#: Largest seed (a signed 64-bit integer): larger ones were silently reduced modulo 2**63 - 1, so two seeds gave
#: the same crystals.
MAX_SEED = 2**63 - 1
#: Most atoms in one generated crystal: ten times MP-20's largest cell (the models never saw more than 20). The
#: score model's neighbour graph grows with the square of it: one 1,000-atom crystal took 1.2 GB for one step on a
#: CPU, 5,000 atoms asked for 8 GB; sixteen 200-atom crystals took 0.8 GB.
MAX_ATOMS_PER_CRYSTAL = 200
#: Most atoms denoised together (``batch_size`` × atoms per crystal; 20 per crystal when they are drawn from the
#: checkpoint's table): a batch of 2,000 MP-20-sized crystals took 2.7 GB on a CPU; 100,000 would take ~130 GB.
MAX_ATOMS_PER_BATCH = 20_000

# ------------------------------------------------------------------------------------------- architecture
#: Largest GemNet cutoff (Å; official 7). The neighbour graph grows with its cube.
MAX_CUTOFF = 20.0
#: Most neighbours per atom in the graph (official 50).
MAX_NEIGHBORS = 200
#: Most periodic images per lattice direction searched for neighbours (official 5).
MAX_CELL_IMAGES = 10
#: Most interaction blocks (official 4).
MAX_BLOCKS = 16
#: Largest embedding or hidden size (official 512; a 10**9 embedding asked the allocator for 4 TB).
MAX_HIDDEN = 4096
#: Most radial basis functions (official 128) and spherical harmonics orders (official 7).
MAX_RADIAL = 1024
MAX_SPHERICAL = 16
#: Most residual layers in one stack (official: 1, 2 and 3).
MAX_LAYERS = 16
#: The bound of each integer size of ``GemNetConfig`` (``field: (limit, name, how)``).
ARCHITECTURE_BOUNDS: dict[str, tuple[int, str, str]] = {
    **{k: (MAX_HIDDEN, "MAX_HIDDEN", "the official sizes are at most 512")
       for k in ("emb_size_atom", "emb_size_edge", "latent_dim", "emb_size_trip", "emb_size_rbf", "emb_size_cbf",
                 "emb_size_bil_trip", "num_atom_classes")},
    "num_blocks": (MAX_BLOCKS, "MAX_BLOCKS", "the official model has 4"),
    "num_radial": (MAX_RADIAL, "MAX_RADIAL", "the official model has 128"),
    "num_spherical": (MAX_SPHERICAL, "MAX_SPHERICAL", "the official model has 7"),
    **{k: (MAX_LAYERS, "MAX_LAYERS", "the official model has at most 3")
       for k in ("num_before_skip", "num_after_skip", "num_concat", "num_atom")},
    "envelope_exponent": (MAX_LAYERS, "MAX_LAYERS", "the official exponent is 5"),
    "max_neighbors": (MAX_NEIGHBORS, "MAX_NEIGHBORS", "the official model has 50"),
    "max_cell_images_per_dim": (MAX_CELL_IMAGES, "MAX_CELL_IMAGES", "the official model has 5"),
}
#: Largest noise-schedule parameters: the lattice's β_max (official 20) and the coordinates' σ_max (official 5).
#: ``beta_max: 1e308`` made α(t) underflow to 0 and ended in a singular matrix.
MAX_BETA = 1_000.0
MAX_SIGMA = 1_000.0
#: Most periodic images of the wrapped normal (official 3).
MAX_WRAP_IMAGES = 10

# ----------------------------------------------------------------------------------------------- campaigns
#: Most arms (grid points) of one campaign; each arm builds and checks a sampler before Ray starts.
MAX_CAMPAIGN_ARMS = 1_000

# ------------------------------------------------------------------------------------------ files and atoms
#: Largest CIF read (bytes), checked before parsing: a 200-atom P1 CIF is ~20 kB; a 40 MB CIF of 10**6 sites
#: took minutes to parse before the atom cap could refuse it.
MAX_CIF_BYTES = 2 << 20
#: Largest extxyz/xyz file read at once (bytes): ~10**6 generated crystals.
MAX_STRUCTURE_FILE_BYTES = 1 << 30
#: Largest value of the relaxation's atom cap (``evaluate --max-atoms``): CHGNet took 9.6 GB for 500 atoms.
MAX_RELAX_ATOMS = 2_000
#: Most atoms in one exported candidate (spglib symmetrization, CIF, POSCAR and XRD of a 31,250-atom cell hung).
MAX_EXPORT_ATOMS = 1_000


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_at_most(name: str, value: Any, limit: float, constant: str, how: str = "") -> None:
    """``ValueError`` naming ``name=value``, the bound ``constant=limit`` and ``how`` to do without it, when a number
    exceeds ``limit``; a non-number or NaN is left to the caller's own type check."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and math.isnan(value):
        return
    if value > limit:
        shown = f"{limit:,}" if is_int(limit) else f"{limit:g}"
        raise ValueError(f"{name}={value!r} is more than {constant}={shown} (mattergen_lab.limits)" + (f"; {how}" if how else ""))
