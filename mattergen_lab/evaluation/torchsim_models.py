"""torch-sim model interfaces for our relaxers' force fields: CHGNet and MatterSim, batched, with a collapse guard.

:mod:`~mattergen_lab.evaluation.batched_relax` runs torch-sim's FIRE over a batch of crystals; it needs the force
field as a torch-sim ``ModelInterface`` (energies in eV, total; forces in eV/Å; stresses in eV/Å³, ASE's sign).
Both interfaces here share the ASE calculator's loaded network (nothing is loaded twice) and the same contract:

* a cell denser than :attr:`min_volume_per_atom` (set by the engine from ``RelaxConfig``) is not evaluated
  (NaN energy, zero forces): a collapsing cell's neighbour graph grows without bound, so the engine's guard
  reports it before the force field sees it;
* a crystal whose graph cannot be built gets NaN too, and its message in :attr:`failures` (batch index →
  message) for the last call, so one bad crystal does not fail the others.

torch-sim 0.3.0 ships no CHGNet interface. It ships a MatterSim one (``torch_sim.models.mattersim``), but with
mattersim 1.2.3 that fails on every machine without CUDA (it calls mattersim's ``batch_to_dict`` without a
device, whose default is ``"cuda"``: "Torch not compiled with CUDA enabled"), and it has neither the collapse
guard nor per-crystal failures; :class:`MatterSimModel` here is ours.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mattergen_lab.evaluation.relax import Relaxer


def torchsim_available() -> bool:
    """Whether torch-sim imports here."""
    try:
        import torch_sim  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "use ASE"
        return False
    return True


def has_batched_model(calculator: Any) -> bool:
    """Whether :func:`batched_model` can wrap this ASE calculator's network."""
    return type(calculator).__name__ in ("CHGNetCalculator", "MatterSimCalculator")


def _model_interface_base() -> type:
    from torch_sim.models.interface import ModelInterface

    return ModelInterface


_Base: type = _model_interface_base() if torchsim_available() else object


class _Batch:
    """The crystals of a torch-sim state as numpy arrays, and which of them the force field may see."""

    def __init__(self, state: Any, min_volume_per_atom: float) -> None:
        self.n = state.n_systems
        self.counts = state.n_atoms_per_system.tolist()
        self.cells = state.row_vector_cell.detach().cpu().double().numpy()
        self.positions = state.positions.detach().cpu().double().numpy()
        self.numbers = state.atomic_numbers.detach().cpu().numpy()
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(int)
        volumes = np.abs(np.linalg.det(self.cells)) if self.n else np.zeros(0)
        # collapsing (or NaN) cells are not evaluated
        self.evaluated = [bool(volumes[i] / max(self.counts[i], 1) >= min_volume_per_atom) for i in range(self.n)]

    def atoms_slice(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def graphs(self, build: Any, label: str) -> tuple[list[Any], list[int], dict[int, str]]:
        """``build(cell, numbers, positions)`` for every evaluated crystal: (graphs, their crystal indices, failures).

        A crystal whose graph cannot be built is left out and reported (``failures[i]``, prefixed by ``label``),
        so one bad crystal never sinks the batch."""
        graphs, owners, failures = [], [], {}
        for i in range(self.n):
            if not self.evaluated[i]:
                continue
            sl = self.atoms_slice(i)
            try:
                graphs.append(build(self.cells[i], self.numbers[sl], self.positions[sl]))
                owners.append(i)
            except Exception as exc:  # noqa: BLE001 - reported per crystal by the engine
                failures[i] = f"{label}: {type(exc).__name__}: {exc}"
        return graphs, owners, failures

    def outputs(self, state: Any, dtype: Any, device: Any) -> dict[str, torch.Tensor]:
        """NaN energies, zero forces and stresses: what a crystal that is not evaluated gets."""
        import torch

        return {
            "energy": torch.full((self.n,), math.nan, dtype=dtype, device=device),
            "forces": torch.zeros((state.n_atoms, 3), dtype=dtype, device=device),
            "stress": torch.zeros((self.n, 3, 3), dtype=dtype, device=device),
        }

    def fill(self, out: dict[str, torch.Tensor], owners: list[int], energy: torch.Tensor,
             forces: list[torch.Tensor], stress: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        dtype, device = out["energy"].dtype, out["energy"].device
        idx = torch.tensor(owners, device=device, dtype=torch.long)
        out["energy"][idx] = energy.to(device, dtype)
        out["stress"][idx] = stress.to(device, dtype)
        for i, fi in zip(owners, forces, strict=True):
            out["forces"][self.atoms_slice(i)] = fi.to(device, dtype)
        return out


class CHGNetModel(_Base):  # type: ignore[misc, valid-type]
    """torch-sim ``ModelInterface`` around a loaded CHGNet: energies (eV, total), forces (eV/Å), stress (eV/Å³).

    One CHGNet forward per batch (its own batched graph); graphs are built per crystal with CHGNet's own
    converter, as its ASE calculator does. Collapsing cells and failed graphs: see the module docstring.
    """

    def __init__(self, model: Any, *, device: str | torch.device = "cpu", dtype: Any = None) -> None:
        import torch

        super().__init__()
        self.model = model.to(device).eval()
        self._device = torch.device(device)
        self._dtype = dtype or torch.float64  # the optimizer's precision; CHGNet itself runs in float32
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        self.min_volume_per_atom = 0.0
        self.failures: dict[int, str] = {}

    def forward(self, state: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        from pymatgen.core import Lattice, Structure

        def build(cell: np.ndarray, numbers: np.ndarray, positions: np.ndarray) -> Any:
            s = Structure(Lattice(cell), numbers.tolist(), positions, coords_are_cartesian=True)
            return self.model.graph_converter(s).to(self._device)

        batch = _Batch(state, self.min_volume_per_atom)
        graphs, owners, self.failures = batch.graphs(build, "CHGNet graph")
        out = batch.outputs(state, self._dtype, self._device)
        if graphs:
            out = batch.fill(out, owners, *self._predict(graphs))
        return out

    def _predict(self, graphs: list) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Total energies (eV), forces per crystal (eV/Å), stresses (eV/Å³), detached.

        CHGNet's own ``forward`` takes two backward passes that keep the graph for training (``create_graph``);
        here one backward without it gives both gradients, the same numbers at about half the cost.
        """
        import torch
        from chgnet.model.model import BatchedGraph

        m = self.model
        with torch.enable_grad():
            g = BatchedGraph.from_graphs(graphs, bond_basis_expansion=m.bond_basis_expansion,
                                         angle_basis_expansion=m.angle_basis_expansion, compute_stress=True)
            pred = m._compute(g, compute_force=False, compute_stress=False)  # noqa: SLF001
            per_graph = pred["atoms_per_graph"]
            model_energy = pred["e"] * per_graph if m.is_intensive else pred["e"]
            grads = torch.autograd.grad(model_energy.sum(), [*g.atom_positions, *g.strains])
        comp = 0 if m.composition_model is None else m.composition_model(graphs).detach()
        energy = (pred["e"].detach() + comp) * (per_graph if m.is_intensive else 1)
        n = len(graphs)
        forces = [-gr.detach() for gr in grads[:n]]
        stress = torch.stack([gr.detach() for gr in grads[n:]]) / g.volumes.detach().view(-1, 1, 1)
        return energy, forces, stress


class MatterSimModel(_Base):  # type: ignore[misc, valid-type]
    """torch-sim ``ModelInterface`` around a loaded MatterSim ``Potential`` (the one its ASE calculator holds).

    Graphs are built per crystal with MatterSim's own ``GraphConvertor`` at the checkpoint's two- and three-body
    cutoffs, as its ASE calculator does, then one forward and one backward for the whole batch. The network
    runs in its own precision (float32); the optimizer's state is float64. Collapsing cells and failed graphs:
    see the module docstring. ``device`` must be where the potential was loaded (its ASE calculator shares it).
    """

    def __init__(self, potential: Any, *, device: str | torch.device = "cpu", dtype: Any = None) -> None:
        import torch
        from ase.units import GPa
        from mattersim.datasets.utils.convertor import GraphConvertor

        super().__init__()
        self._device = torch.device(device)
        loaded_on = torch.device(getattr(potential, "device", self._device))
        if loaded_on.type != self._device.type:
            raise ValueError(f"the MatterSim potential was loaded on {loaded_on}, not {self._device}: "
                             f"load the relaxer with device={str(self._device)!r}")
        self.potential = potential.eval()
        self._dtype = dtype or torch.float64
        self._compute_stress = True
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        self.min_volume_per_atom = 0.0
        self.failures: dict[int, str] = {}
        args = potential.model.model_args
        self.convertor = GraphConvertor("m3gnet", args["cutoff"], True, args["threebody_cutoff"])
        self.stress_unit = GPa  # MatterSim's stresses are in GPa; torch-sim's are eV/Å³

    def forward(self, state: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        import torch
        from ase import Atoms
        from mattersim.forcefield.potential import batch_to_dict
        from torch_geometric.data import Batch

        def build(cell: np.ndarray, numbers: np.ndarray, positions: np.ndarray) -> Any:
            graph = self.convertor.convert(Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True))
            if graph is None:
                raise ValueError("MatterSim's converter returned no graph")
            return graph

        batch = _Batch(state, self.min_volume_per_atom)
        graphs, owners, self.failures = batch.graphs(build, "MatterSim graph")
        out = batch.outputs(state, self._dtype, self._device)
        if not graphs:
            return out
        inputs = batch_to_dict(Batch.from_data_list(graphs), device=self._device)
        with torch.enable_grad():
            pred = self.potential.forward(inputs, include_forces=True, include_stresses=True)
        counts = [batch.counts[i] for i in owners]
        forces = list(torch.split(pred["forces"].detach(), counts))
        stress = pred["stresses"].detach() * self.stress_unit
        return batch.fill(out, owners, pred["total_energy"].detach(), forces, stress)


def batched_model(relaxer: Relaxer, *, device: str = "cpu") -> Any:
    """The torch-sim model for a relaxer's calculator (sharing its loaded network)."""
    kind = type(relaxer.calculator).__name__
    if kind == "CHGNetCalculator":
        return CHGNetModel(relaxer.calculator.model, device=device)
    if kind == "MatterSimCalculator":
        return MatterSimModel(relaxer.calculator.potential, device=device)
    raise ValueError(f"no batched model for a {kind} calculator (relaxer {relaxer.name!r}); use relax engine 'ase'")
