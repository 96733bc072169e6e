"""mattergen_lab.design.session: a design session without widgets (generate, evaluate by id, table, export), and
export_candidates for plain structures from ``mattergen_lab.sample()``.

The bundled ``mgl_mp20_small`` at 4 steps and a fake evaluator keep it fast; the real evaluation is tested elsewhere.
"""

from __future__ import annotations

import io
import json
import types
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

import mattergen_lab
from mattergen_lab import design

BASE = "mgl_mp20_small"
RUN = {"num_samples": 3, "batch_size": 2, "num_steps": 4, "seed": 3}  # two chunks: samples (0, 1) and (2,)


class FakeEvaluator:
    """E_hull = 0.05 × position in the call; the first structure of each call is S.U.N.; "relaxed" = the cell scaled
    by 1.01 (so relaxed CIFs differ from the generated ones)."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, structures, *, ids=None, progress=None):
        self.calls.append(list(ids))
        rows = [{"id": cid, "formula": s.composition.reduced_formula, "energy_per_atom": -5.0 + i,
                 "energy_above_hull": 0.05 * i, "stable": True, "is_unique": True, "is_novel": True,
                 "novel_unique_stable": i == 0, "relax_status": "ok"} for i, (s, cid) in enumerate(zip(structures, ids))]
        for i in range(len(structures)):
            if progress is not None:
                progress(i + 1, len(structures))
        relaxed = [s.copy() for s in structures]
        for r in relaxed:
            r.scale_lattice(r.volume * 1.01 ** 3)
        protocol = {"relaxer": "fake", "stability_threshold": 0.1, "reference": "fake", "N": len(rows)}
        return types.SimpleNamespace(table=pd.DataFrame(rows), protocol=protocol, metrics={}, relaxed=relaxed)


class ElementsOnlyReference:
    """A hull of the pure elements at 0 eV/atom, for any system (enough for a hull figure in the export)."""

    def phase_diagram(self, elements):
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        return PhaseDiagram([PDEntry(Composition(e), 0.0) for e in elements])


def _same(a, b) -> None:
    """The same crystals, atom for atom (as tests/test_request.py compares the app's, run_design's and the CLI's)."""
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert list(sa.atomic_numbers) == list(sb.atomic_numbers)
        d = np.abs(np.asarray(sa.frac_coords) % 1.0 - np.asarray(sb.frac_coords) % 1.0)
        assert np.minimum(d, 1 - d).max() < 1e-5 and np.abs(sa.lattice.matrix - sb.lattice.matrix).max() < 1e-4


@pytest.fixture(scope="module")
def one_thread():
    """Bitwise reproducibility needs the same thread count for the session and sample()."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generated(one_thread):
    """A session after one run of 3 crystals, with every frame it streamed and the session's size at each."""
    session = design.DesignSession(evaluator=FakeEvaluator(), reference=ElementsOnlyReference())
    frames = []
    run = session.generate(design.DesignRequest(checkpoint=BASE, every=2, device="cpu", **RUN),
                           on_frame=lambda f: frames.append((f, len(session.candidates))))
    return session, run, frames


def test_a_session_generates_the_crystals_sample_makes(generated):
    session, run, frames = generated
    assert [c.id for c in session.candidates] == ["1-0", "1-1", "1-2"] and session.last_run is run
    _same([c.structure for c in session.candidates], mattergen_lab.sample(BASE, **RUN))
    # two chunks of 4 steps with every=2: steps 0, 2, 4, then the final frame; its candidates are in the session already
    per_chunk = [(0, False), (2, False), (4, False), (4, True)]
    assert [(f.batch, f.step, f.final) for f, _ in frames] == [(j, s, fin) for j in (0, 1) for s, fin in per_chunk]
    assert [n for f, n in frames if f.final] == [2, 3] and frames[-1][0].done == frames[-1][0].total == 8
    table = session.table
    assert list(table["id"]) == ["1-0", "1-1", "1-2"] and list(table["checkpoint"]) == [BASE] * 3
    assert list(table["formula"]) == [c.structure.composition.reduced_formula for c in session.candidates]
    assert table["energy_above_hull"].isna().all() and table["plausible_density"].notna().all()
    with pytest.raises(ValueError, match="must be a DesignRequest"):
        session.generate(mattergen_lab.SamplingRequest(checkpoint=BASE, num_samples=1))


def test_evaluations_merge_by_id_and_a_second_evaluation_replaces_the_row(generated):
    session = design.DesignSession(evaluator=FakeEvaluator())  # the generated crystals, not evaluated yet
    assert session.add_candidates(generated[0].candidates) == ["1-0", "1-1", "1-2"]
    ev = session.evaluator
    one = session.evaluate(ids=["1-1"])
    assert ev.calls == [["1-1"]] and list(one["id"]) == ["1-1"]
    e_hull = session.table.set_index("id")["energy_above_hull"]
    assert e_hull["1-1"] == 0.0 and np.isnan(e_hull["1-0"]) and np.isnan(e_hull["1-2"])
    assert [c.id for c in session.pending()] == ["1-0", "1-2"]

    progress = []
    session.evaluate(progress=lambda done, total: progress.append((done, total)))  # the two not evaluated yet
    assert ev.calls[-1] == ["1-0", "1-2"] and progress == [(1, 2), (2, 2)]
    assert session.table["energy_above_hull"].tolist() == pytest.approx([0.0, 0.0, 0.05])
    assert session.table["novel_unique_stable"].tolist() == [True, True, False]
    assert session.evaluate().empty and len(ev.calls) == 2  # nothing left: the evaluator is not called

    session.evaluate(ids=["1-2"])  # again: its row is replaced (now first of its call), not added
    assert len(session.evaluations) == 3 and session.table["id"].is_unique
    assert session.table.set_index("id")["energy_above_hull"]["1-2"] == 0.0
    assert session.protocol["relaxer"] == "fake" and set(session.relaxed) == {"1-0", "1-1", "1-2"}
    assert session.relaxed["1-0"].volume == pytest.approx(session.candidates[0].structure.volume * 1.01 ** 3)
    with pytest.raises(ValueError, match=r"unknown candidate ids \['9-9'\]"):
        session.evaluate(ids=["9-9"])
    session.evaluator = lambda structures, **kw: types.SimpleNamespace(table=pd.DataFrame({"id": ["x"]}), protocol={})
    with pytest.raises(ValueError, match="returned 1 rows for 3 structures"):
        session.evaluate(ids=["1-0", "1-1", "1-2"])


def test_a_session_exports_a_zip_with_its_evaluations_relaxed_cells_and_hull(generated, tmp_path):
    session = generated[0]
    session.evaluate()
    out = session.export(tmp_path / "session.zip", ids=["1-2", "1-0"], review=False)
    table = session.table.set_index("id")
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        csv = pd.read_csv(io.BytesIO(zf.read("report.csv")))
        rep = json.loads(zf.read("report.json"))
    assert list(csv["id"]) == ["1-2", "1-0"]
    assert csv["energy_above_hull"].tolist() == pytest.approx([table.loc["1-2", "energy_above_hull"], table.loc["1-0", "energy_above_hull"]])
    stems = [f"{i}_{table.loc[i, 'formula']}" for i in ("1-2", "1-0")]
    assert {f"{s}_relaxed_P1.cif" for s in stems} <= names and {f"{s}_P1.cif" for s in stems} <= names
    assert "hull.png" in names  # "auto": the first exported candidate's system, from the session's reference
    assert rep["checkpoint"] == BASE and rep["evaluation_protocol"]["relaxer"] == "fake" and rep["num_candidates"] == 2
    with zipfile.ZipFile(session.export(tmp_path / "nohull.zip", ["1-1"], review=False, hull=None)) as zf:
        assert "hull.png" not in zf.namelist()
    with pytest.raises(ValueError, match="'7-7' is not in this session"):
        session.export(tmp_path / "x.zip", ["1-0", "7-7"], review=False)
    with pytest.raises(ValueError, match="no candidates selected"):
        session.export(tmp_path / "x.zip", [], review=False)


def test_export_candidates_takes_plain_structures_with_or_without_an_evaluation(tmp_path, one_thread):
    from pymatgen.core import Structure

    structures = mattergen_lab.sample(BASE, 2, batch_size=2, num_steps=4, seed=1)
    formulas = [s.composition.reduced_formula for s in structures]

    plain = design.export_candidates(structures, path=tmp_path / "plain.zip")
    with zipfile.ZipFile(plain) as zf:
        csv = pd.read_csv(io.BytesIO(zf.read("report.csv")))
        rep = json.loads(zf.read("report.json"))
        # the member's formula part is made file-safe ("(Ru2O)2" becomes "_Ru2O_2"): find it by id and suffix
        name = next(n for n in zf.namelist() if n.startswith("0_") and n.endswith("_P1.cif"))
        back = Structure.from_str(zf.read(name).decode(), fmt="cif")
    assert list(csv["id"]) == [0, 1] and list(csv["formula"]) == formulas
    assert list(csv["space_group"]) == [float(design.candidate_oracles(s)["space_group"]) for s in structures]
    assert csv["energy_above_hull"].isna().all() and rep["evaluation_protocol"] == "not evaluated"
    assert back.composition == structures[0].composition

    result = FakeEvaluator()(structures, ids=["a", "b"])
    evaluated = design.export_candidates(structures, path=tmp_path / "evaluated.zip", evaluation=result)
    with zipfile.ZipFile(evaluated) as zf:
        csv = pd.read_csv(io.BytesIO(zf.read("report.csv")))
        rep = json.loads(zf.read("report.json"))
    assert list(csv["id"]) == ["a", "b"] and csv["energy_above_hull"].tolist() == pytest.approx([0.0, 0.05])
    assert rep["evaluation_protocol"]["relaxer"] == "fake"
    table_only = design.export_candidates(structures, None, tmp_path / "table.zip", evaluation=result.table, ids=["b", "a"])
    with zipfile.ZipFile(table_only) as zf:  # merged by id, not by position: the first structure is called "b" here
        csv = pd.read_csv(io.BytesIO(zf.read("report.csv")))
        assert list(csv["id"]) == ["b", "a"] and csv["energy_above_hull"].tolist() == pytest.approx([0.05, 0.0])
        assert json.loads(zf.read("report.json"))["evaluation_protocol"].startswith("not recorded")

    with pytest.raises(ValueError, match="path=None"):
        design.export_candidates(structures)
    with pytest.raises(ValueError, match="not both"):
        design.export_candidates(structures, design.structure_table(structures), tmp_path / "x.zip", evaluation=result)
    with pytest.raises(ValueError, match="3 ids for 2 structures"):
        design.export_candidates(structures, path=tmp_path / "x.zip", ids=["a", "b", "c"])


def test_the_app_draws_a_session_made_in_a_notebook(generated):
    from must_run import importorskip

    importorskip("ipywidgets")
    importorskip("nglview")
    importorskip("plotly")
    from mattergen_lab.widgets import DesignApp

    session = generated[0]
    app = DesignApp(BASE, session=session, online=False, ranges=dict(design.FALLBACK_RANGES), review_viewer="nglview")
    assert app.session is session and app.candidates is session.candidates and app.table is session.table
    assert list(app.candidate_panel.rows) == ["1-0", "1-1", "1-2"]  # drawn at once
    with pytest.raises(ValueError, match="evaluator: give these to the DesignSession"):
        DesignApp(BASE, session=session, evaluator=FakeEvaluator(), online=False, ranges=dict(design.FALLBACK_RANGES))
