"""Batched relaxation: torch-sim's FIRE with a Fréchet cell filter, many crystals in one state.

The same protocol as :class:`~mattergen_lab.evaluation.relax.Relaxer` (ASE FIRE, one structure at a time, kept
as the reference), with the same :class:`RelaxConfig` and the same :class:`RelaxResult` per structure:

* FIRE (torch-sim's ``ase_fire`` flavour: ASE's update rules, ``dt`` 0.1 → 1.0, max step 0.2 Å) on positions
  and cell together through the Fréchet (matrix-log) cell parameterisation, cell factor = atoms per cell
  as in ASE's ``FrechetCellFilter``. Converged, as there, when every atomic force (in the undeformed frame)
  and every row of the cell force is below ``fmax``.
* **In-flight batching**: a crystal leaves the batch when it converges, hits its cap or trips the guard, and
  the next one enters. The batch is sized by torch-sim's memory metric (atoms × number density, the
  ``memory_scales_with`` of the model): on a GPU the limit is measured with torch-sim's estimator, on a CPU it
  is ``max_memory_scaler`` (default :data:`CPU_MAX_MEMORY_SCALER`, about 7 crystals of 10 atoms).
* Caps and guard per structure: step cap, time cap (a structure is charged its share of each batched step,
  by atom count, so a crowded batch does not time it out), volume ratio, the collapse floor (a collapsing
  cell is kept from the force field: the model interfaces skip it), non-finite values. Statuses as in the
  ASE path: ``converged``, ``max_steps``, ``timeout``, ``exploded``, ``failed``.
* Niggli reduction and the atom cap come from :func:`~mattergen_lab.evaluation.relax.prepare_structure`,
  shared with the ASE path.

Energies keep the relaxer's convention: :class:`BatchedRelaxer` *is* a :class:`Relaxer` (same name, correction
scheme and :meth:`to_entry`), so CHGNet's already-corrected energies are never corrected again and MatterSim's
raw ones get MP2020 once.

The force fields enter as torch-sim model interfaces, CHGNet's and MatterSim's, both ours:
:mod:`~mattergen_lab.evaluation.torchsim_models` (its docstring says why not torch-sim's MatterSim one).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mattergen_lab.evaluation.relax import Relaxer, RelaxResult, prepare_structure
from mattergen_lab.evaluation.torchsim_models import batched_model, has_batched_model, torchsim_available
from mattergen_lab.forcefields import package_version

if TYPE_CHECKING:  # pragma: no cover
    import threading

    import torch
    from pymatgen.core import Structure

ENGINES = ("auto", "torchsim", "ase")

#: CPU batch limit in torch-sim's "n_atoms_x_density" metric (atoms × atoms/nm³): a 10-atom cell at
#: 15 Å³/atom scores about 670, so this holds about 7 such crystals. On a CPU, small batches are best: 64
#: rattled MP-20 crystals (1 thread, 2 loaded cores) relaxed at 0.77/s with limit 1,200, 0.86 (2,500),
#: 0.93-1.02 (5,000), 0.91 (12,000), 0.78 (25,000); bigger batches lose to cache misses in CHGNet's graphs.
CPU_MAX_MEMORY_SCALER = 5_000.0


def resolve_engine(engine: str, relaxer: Any = None) -> str:
    """``"torchsim"`` or ``"ase"``. ``"auto"``: torch-sim where it imports and the relaxer has a batched model."""
    key = str(engine).lower()
    if key not in ENGINES:
        raise ValueError(f"unknown relax engine {engine!r}; expected one of {list(ENGINES)}")
    if key != "auto":
        if key == "torchsim" and not torchsim_available():
            raise ImportError("relax engine 'torchsim' needs torch-sim: pip install 'torch-sim-atomistic==0.3.0'")
        return key
    if not torchsim_available():
        return "ase"
    if relaxer is None or isinstance(relaxer, (str, BatchedRelaxer)):
        return "torchsim"
    # a Relaxer made elsewhere: batch it only when it is a plain Relaxer around a calculator we can wrap
    return "torchsim" if type(relaxer) is Relaxer and has_batched_model(relaxer.calculator) else "ase"


# ====================================================================== the engine


@dataclass
class _Slot:
    index: int  # position in the caller's list
    structure: Structure  # the prepared (Niggli-reduced) start
    v_start: float
    n_atoms: int
    steps: int = 0
    seconds: float = 0.0


@dataclass
class BatchedRelaxer(Relaxer):
    """A :class:`Relaxer` whose :meth:`relax_many` runs torch-sim's batched FIRE (see the module docstring).

    Build one with :func:`get_batched_relaxer`. ``relax`` (one structure) is a batch of one.
    """

    model: Any = None
    device: str = "cpu"
    max_memory_scaler: float | None = None  # torch-sim's metric; None: measured on a GPU, the CPU default here

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "relax_engine": f"torch-sim {package_version('torch-sim-atomistic')} batched FIRE"}

    def relax(self, structure: Structure) -> RelaxResult:
        return self.relax_many([structure])[0]

    def relax_many(  # noqa: C901, PLR0912, PLR0915
        self,
        structures: Sequence[Structure],
        *,
        progress: Callable[[int, int], None] | None = None,
        on_result: Callable[[int, RelaxResult], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[RelaxResult | None]:
        """Relax all ``structures``; results in input order (``None`` only for ones a ``cancel`` left unfinished).

        ``on_result(index, result)`` is called as each structure finishes (in finishing order), then
        ``progress(done, total)``.
        """
        import torch
        import torch_sim as ts

        cfg, model, total = self.config, self.model, len(structures)
        results: list[RelaxResult | None] = [None] * total

        def finish(slot_index: int, result: RelaxResult) -> None:
            results[slot_index] = result
            if on_result is not None:
                on_result(slot_index, result)
            if progress is not None:
                progress(sum(r is not None for r in results), total)

        pending: deque[_Slot] = deque()
        for i, s in enumerate(structures):
            prepared, refused = prepare_structure(s, cfg)
            if refused is not None:
                finish(i, refused)
            else:
                pending.append(_Slot(i, prepared, float(prepared.volume), len(prepared)))
        if not pending:
            return results
        init_fn, step_fn = ts.frechet_cell_fire(model=model, md_flavor="ase_fire", dt_start=_DT_START, f_dec=_F_DEC)
        if hasattr(model, "min_volume_per_atom"):
            model.min_volume_per_atom = cfg.min_volume_per_atom
        dtype, dev = model.dtype, model.device
        limit = self._memory_limit(list(pending))

        def metric(slot: _Slot) -> float:
            if model.memory_scales_with == "n_atoms":
                return float(slot.n_atoms)
            return slot.n_atoms * slot.n_atoms / (slot.v_start / 1000)

        state, active = None, []
        while pending or active:
            if cancel is not None and cancel.is_set():
                break
            # -- fill: the next crystals enter while the batch is under its memory limit
            entering: list[_Slot] = []
            load = sum(metric(a) for a in active)
            while pending and (not active and not entering or load + metric(pending[0]) <= limit):
                load += metric(pending[0])
                entering.append(pending.popleft())
            if entering:
                t0 = time.perf_counter()
                try:
                    groups = [(init_fn(ts.io.structures_to_state([e.structure for e in entering], dev, dtype)),
                               entering, dict(getattr(model, "failures", {})))]
                except Exception:  # noqa: BLE001 - one bad crystal must not sink the others: one by one
                    groups = []
                    for e in entering:
                        try:
                            groups.append((init_fn(ts.io.structures_to_state([e.structure], dev, dtype)), [e],
                                           dict(getattr(model, "failures", {}))))
                        except Exception as exc:  # noqa: BLE001 - reported, never raised
                            finish(e.index, RelaxResult("failed", e.structure.copy(), math.nan, 0, 0.0,
                                                        message=f"{type(exc).__name__}: {exc}"))
                self._charge(entering, time.perf_counter() - t0)
                for new, slots, failures in groups:
                    _ready_to_join(new)
                    state, active = self._sweep(new, slots, finish, failures, state, active)
            if state is None:
                continue
            # -- one FIRE step for everyone in the batch
            t0 = time.perf_counter()
            try:
                state = step_fn(state)
            except Exception as exc:  # noqa: BLE001 - the batch fails together, each with the reason
                for a in active:
                    finish(a.index, RelaxResult("failed", a.structure.copy(), math.nan, a.steps, a.seconds,
                                                message=f"{type(exc).__name__}: {exc}"))
                state, active = None, []
                continue
            for a in active:
                a.steps += 1
            self._charge(active, time.perf_counter() - t0)
            state, active = self._sweep(state, active, finish, dict(getattr(model, "failures", {})), None, [])
        return results

    # ------------------------------------------------------------------ helpers
    def _memory_limit(self, slots: list[_Slot]) -> float:
        if self.max_memory_scaler:
            return float(self.max_memory_scaler)
        if str(self.device).startswith("cuda"):
            import torch_sim as ts
            from torch_sim.autobatching import calculate_memory_scaler, estimate_max_memory_scaler

            sample = sorted(slots, key=lambda s: s.n_atoms)
            picks = [sample[0], sample[-1]]
            states = [ts.io.structures_to_state([p.structure], self.model.device, self.model.dtype) for p in picks]
            metrics = [calculate_memory_scaler(s, self.model.memory_scales_with) for s in states]
            # torch-sim doubles the batch (x1.6) until CUDA runs out of memory; our graphs are built per crystal
            # on the CPU, so the search stops at 4,096 crystals
            limit = 0.8 * float(estimate_max_memory_scaler(self.model, states, metrics, max_atoms=4096))
            self.max_memory_scaler = limit  # measured once per relaxer
            return limit
        return CPU_MAX_MEMORY_SCALER

    @staticmethod
    def _charge(slots: list[_Slot], seconds: float) -> None:
        atoms = sum(s.n_atoms for s in slots) or 1
        for s in slots:
            s.seconds += seconds * s.n_atoms / atoms

    def _sweep(self, state: Any, slots: list[_Slot], finish: Callable, failures: dict[int, str],
               keep_state: Any, keep_slots: list[_Slot]) -> tuple[Any, list[_Slot]]:
        """Finish the systems of ``state`` that are done; return the survivors, appended to ``keep_state``."""
        import torch
        import torch_sim as ts

        cfg = self.config
        volume = torch.linalg.det(state.row_vector_cell).abs().double().cpu().numpy()
        energy = state.energy.double().cpu().numpy()
        idx = state.system_idx
        fmax_atoms = torch.zeros(state.n_systems, dtype=torch.float64, device=state.device)
        forces = state.forces.double()
        fmax_atoms = fmax_atoms.scatter_reduce(0, idx, forces.norm(dim=1), "amax", include_self=True)
        # ASE's FrechetCellFilter tests convergence on the forces in the undeformed frame (F @ deformation gradient)
        frame = torch.bmm(forces.unsqueeze(1), state.deform_grad().double()[idx]).squeeze(1)
        fconv = torch.zeros_like(fmax_atoms).scatter_reduce(0, idx, frame.norm(dim=1), "amax", include_self=True)
        fmax_cell = state.cell_forces.double().norm(dim=2).amax(dim=1)
        bad_pos = torch.zeros(state.n_systems, dtype=torch.float64, device=state.device).scatter_reduce(
            0, idx, (~torch.isfinite(state.positions).all(dim=1)).double(), "amax", include_self=True)
        fmax_atoms, fconv, fmax_cell, bad_pos = (t.cpu().numpy() for t in (fmax_atoms, fconv, fmax_cell, bad_pos > 0))
        keep: list[int] = []
        for j, slot in enumerate(slots):
            verdict: tuple[str, str] | None = None
            ratio = volume[j] / slot.v_start if slot.v_start > 0 else math.inf
            per_atom = volume[j] / slot.n_atoms
            if j in failures:
                verdict = ("failed", failures[j])
            elif not (1 / cfg.max_volume_factor <= ratio <= cfg.max_volume_factor):
                verdict = ("exploded", f"volume changed by a factor {ratio:.3g} (from {slot.v_start:.3g} Å³)")
            elif per_atom < cfg.min_volume_per_atom:
                from mattergen_lab.evaluation.relax import _collapse_message

                verdict = ("exploded", _collapse_message(per_atom, cfg))
            elif not math.isfinite(energy[j]) or bad_pos[j]:
                verdict = ("exploded", "non-finite energy or positions")
            elif max(fconv[j], fmax_cell[j]) < cfg.fmax:
                verdict = ("converged", "")
            elif slot.steps >= cfg.max_steps:
                verdict = ("max_steps", f"not converged to fmax {cfg.fmax} eV/Å in {cfg.max_steps} steps")
            elif slot.seconds > cfg.max_seconds:
                verdict = ("timeout", f"stopped after {cfg.max_seconds:g} s")
            if verdict is None:
                keep.append(j)
                continue
            status, message = verdict
            ok = status in ("converged", "max_steps", "timeout")
            frame = self._structure(state, j, slot)
            finish(slot.index, RelaxResult(status, frame, float(energy[j]) if ok else math.nan, slot.steps,
                                           slot.seconds, float(fmax_atoms[j]) if ok else math.nan, message))
        survivors = state[keep] if keep and len(keep) < len(slots) else (state if keep else None)
        kept_slots = [slots[j] for j in keep]
        if keep_state is None:
            return survivors, kept_slots
        if survivors is None:
            return keep_state, keep_slots
        return ts.concatenate_states([keep_state, survivors]), [*keep_slots, *kept_slots]

    @staticmethod
    def _structure(state: Any, j: int, slot: _Slot) -> Structure | None:
        from pymatgen.core import Lattice, Structure

        mask = (state.system_idx == j).cpu().numpy()
        cell = state.row_vector_cell[j].detach().double().cpu().numpy()
        pos = state.positions.detach().double().cpu().numpy()[mask]
        if not (np.all(np.isfinite(cell)) and np.all(np.isfinite(pos))):
            return None
        return Structure(Lattice(cell), slot.structure.species, pos, coords_are_cartesian=True)


_DT_START, _F_DEC = 0.1, 0.5  # torch-sim's (and ASE's) FIRE defaults


def _ready_to_join(state: Any) -> None:
    """Make freshly initialised systems safe to join a running batch.

    torch-sim marks a fresh system by NaN velocities, and while *any* system of a batch has them, its FIRE step
    skips the power test, the ``dt``/``alpha`` update and the velocity mixing for *every* system: each refill
    would cost the running crystals a plain Euler step (measured: 10-30 % more steps than ASE). Zero velocities
    and ``dt = dt_start / f_dec`` instead give the fresh systems exactly ASE's first step (zero power → ``dt``
    halves to ``dt_start``, ``alpha`` reset, velocities zero) and leave the others alone.
    """
    import torch

    state.velocities = torch.zeros_like(state.positions)
    state.cell_velocities = torch.zeros_like(state.cell_forces)
    state.dt = torch.full_like(state.dt, _DT_START / _F_DEC)


def get_batched_relaxer(
    relaxer: Relaxer | str = "auto",
    *,
    device: str = "cpu",
    load_path: str | None = None,
    config: Any = None,
    max_memory_scaler: float | None = None,
) -> BatchedRelaxer:
    """A :class:`BatchedRelaxer` for a relaxer name (as :func:`~mattergen_lab.evaluation.relax.get_relaxer`) or
    an existing :class:`Relaxer` (its calculator's model is reused, nothing is loaded again)."""
    from mattergen_lab.evaluation.relax import get_relaxer

    if isinstance(relaxer, BatchedRelaxer):
        return relaxer
    if not isinstance(relaxer, Relaxer):
        relaxer = get_relaxer(relaxer, device=device, load_path=load_path, config=config)
    fields = {f.name: getattr(relaxer, f.name) for f in dataclasses.fields(Relaxer)}
    return BatchedRelaxer(**fields, model=batched_model(relaxer, device=device), device=device,
                          max_memory_scaler=max_memory_scaler)
