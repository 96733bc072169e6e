"""Materials design without widgets: requests, streamed runs, candidate tables, Pareto fronts, export.

Everything the design panels (``mattergen_lab.widgets``) do that is not drawing lives here, so a notebook or
a script can do the same in a few lines::

    from mattergen_lab.design import DesignRequest, run_design, candidate_table, export_candidates
    req = DesignRequest(checkpoint="runs/magnets/best", chemical_system="Fe-Co-B",
                        targets={"dft_mag_density": 0.15}, guidance_scale=2.0, num_samples=8, num_steps=200)
    run = run_design(req)                         # list of Candidate in run.candidates
    table = candidate_table(run.candidates)       # formula, space group, HHI, ... one row per candidate
    export_candidates(run.candidates, path="review.zip")  # or plain structures: export_candidates(sample(...), path=...)

or, keeping candidates, evaluations by id, the hull and reviews together as the design app does::

    from mattergen_lab.design import DesignSession
    session = DesignSession()
    session.generate(req); session.evaluate(); session.table; session.export("review.zip", ids=["1-0"])

This package never imports ipywidgets, nglview or plotly.

**Masked atoms.** During denoising an atom may still be in the absorbing MASK state (Z = 101). Snapshots keep
that value; :meth:`CrystalSnapshot.to_structure` shows such atoms as :data:`MASK_PLACEHOLDER` (helium, which
MatterGen never generates, so a He atom in a trajectory is always a still-masked atom).

Its modules, lowest first: ``requests`` (targets, slider ranges, chemistry checks, :class:`DesignRequest`),
``choices`` (which checkpoints can serve the targets), ``runs`` (streamed runs over the sampler's chunk loop),
``tables`` (candidate tables, Pareto fronts, hull data), ``review`` (XRD, nearest known materials, oxidation
states), ``review_report``/``review_export`` (its figures and files), ``export`` (the synthesis-review zip) and
``session`` (:class:`DesignSession`: candidates, evaluations by id, table, hull, reviews, export). Everything public is
importable from ``mattergen_lab.design``.
"""

from __future__ import annotations

from mattergen_lab.design.requests import (  # noqa: F401
    DESIGN_PROPERTIES,
    DesignRequest,
    EVALUATION_COLUMNS,
    EXPORT_ANGLE_TOLERANCE,
    EXPORT_SYMPREC,
    FALLBACK_RANGES,
    MASK_PLACEHOLDER,
    PropertyRange,
    TARGET_ALIASES,
    allowed_elements,
    property_for,
    property_ranges,
    validate_chemical_system,
)
from mattergen_lab.design.choices import (  # noqa: F401
    CheckpointOption,
    checkpoint_options,
    checkpoint_properties,
    hub_reachable,
)
from mattergen_lab.design.runs import (  # noqa: F401
    Candidate,
    CrystalSnapshot,
    DesignFrame,
    DesignRun,
    candidate_oracles,
    iter_design,
    run_design,
    snapshots_from_batch,
)
from mattergen_lab.design.tables import (  # noqa: F401
    CANDIDATE_COLUMNS,
    HullData,
    candidate_table,
    structure_table,
    hull_data,
    pareto_front,
)
from mattergen_lab.design.export import (  # noqa: F401
    design_report,
    export_candidates,
)
from mattergen_lab.design.review import (  # noqa: F401
    CandidateReview,
    KnownMaterial,
    KnownMaterials,
    NearestKnown,
    guess_oxidation_states,
    review_candidate,
)
from mattergen_lab.design.xrd import XRDPattern, xrd_pattern  # noqa: F401
from mattergen_lab.design.session import MAX_HULL_ELEMENTS, DesignSession, default_evaluator  # noqa: F401
