"""Writing samples as they are made: the folder layout of ``sample_to_dir``, resumable.

:class:`SampleDirWriter` is the reporter the sampler's chunk loop hands frames to (the sampler itself writes no
files). Layout of ``out_dir``:

* ``cifs/gen_{i}.cif``: one CIF per crystal (its Niggli-reduced cell), each written atomically as soon as its
  chunk is done;
* ``generated_crystals.extxyz``: one frame per crystal (``info["gen_index"] = i``), appended after each chunk;
* ``trajectories/gen_{i}.extxyz`` when ``record_every > 0``: every ``record_every``-th denoising step;
* ``.mattergen-lab.lock`` while a run writes (:class:`~mattergen_lab.fileio.FolderLock`): a second run into the
  folder is refused, naming the process that writes it.

On restart, crystals whose CIF exists are in :attr:`SampleDirWriter.skip`; the extxyz is first repaired from the
CIFs if an earlier run stopped while appending to it. ``sampling.json`` records the settings that decide the
crystals (checkpoint, seed, batch size, steps, atom counts, mask, conditions, guidance); a restart with other
settings is refused, naming the differences, before any file is touched, so two runs never mix in one folder.
More samples with the same settings extend the folder (crystal ``i`` does not depend on ``num_samples``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mattergen_lab.fileio import FolderLock, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from mattergen_lab.sampling.frames import SamplerConfig, SamplerFrame
    from mattergen_lab.sampling.request import SamplingRequest

log = logging.getLogger(__name__)


class SampleDirWriter:
    """Writes the frames of a chunked sampling run into ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, num_samples: int, *, record_every: int = 0,
                 settings: dict[str, Any] | None = None) -> None:
        self.out = Path(out_dir)
        if not str(out_dir).strip():  # '' is the working directory: never meant as an output folder
            raise ValueError(f"out_dir={str(out_dir)!r} is empty; give an output folder")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out_dir={str(self.out)!r} exists and is not a folder")
        # one writer per folder (two runs at once wrote every crystal twice); released by close() or at exit
        self._lock = FolderLock(self.out, "sample").acquire()
        try:
            self._open(num_samples, record_every, settings)
        except BaseException:
            self.close()
            raise

    def _open(self, num_samples: int, record_every: int, settings: dict[str, Any] | None) -> None:
        if settings is not None:
            check_settings(self.out, settings)
        self.cif_dir = self.out / "cifs"
        try:
            self.cif_dir.mkdir(parents=True, exist_ok=True)
            if settings is not None and not (self.out / SETTINGS_FILE).is_file():
                atomic_write_text(self.out / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True))
        except OSError as exc:
            raise ValueError(f"cannot write samples to {str(self.out)!r}: {exc.strerror or exc}") from None
        self.extxyz = self.out / "generated_crystals.extxyz"
        self.paths = [self.cif_dir / f"gen_{i}.cif" for i in range(num_samples)]
        self.record_every = record_every
        self.traj_dir = self.out / "trajectories"
        if record_every:
            self.traj_dir.mkdir(exist_ok=True)
        repair_extxyz(self.extxyz, self.cif_dir)
        self.skip = {i for i, p in enumerate(self.paths) if p.exists()}
        if len(self.skip) == len(self.paths):
            log.info("all %d crystals already in %s", len(self.paths), self.cif_dir)
        self._traj_tmp: dict[int, str] = {}

    def close(self) -> None:
        """Release the folder (another run may write into it)."""
        self._lock.release()

    def __enter__(self) -> "SampleDirWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_frame(self, indices: list[int], frame: "SamplerFrame") -> int:
        """Record one frame of the chunk holding ``indices``; returns how many crystals it wrote (0 until final)."""
        if self.record_every and (frame.final or frame.step % self.record_every == 0):
            append_trajectory(self.traj_dir, self._traj_tmp, indices, frame)
        if not frame.final:
            return 0
        structures = frame.batch.to_structures(standard_orientation=True)
        new = [(i, s) for i, s in zip(indices, structures) if i not in self.skip]
        for i, s in new:
            write_cif(self.paths[i], s)
        append_extxyz(self.extxyz, new)
        for i, tmp in self._traj_tmp.items():
            if i not in self.skip:
                os.replace(tmp, self.traj_dir / f"gen_{i}.extxyz")
            elif os.path.exists(tmp):
                os.unlink(tmp)
        self._traj_tmp = {}
        log.info("wrote %d crystals (%s)", len(new), ", ".join(self.paths[i].name for i, _ in new))
        return len(new)


SETTINGS_FILE = "sampling.json"


def plain(obj: Any) -> Any:
    """A JSON-able description of a setting (configs and distributions by their ``to_dict``, tensors as lists)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def sampling_record(config: "SamplerConfig", request: "SamplingRequest", *, dtype: Any, num_atoms: Any,
                    allowed_elements: Any, properties: Any, settings: Any = None) -> dict[str, Any]:
    """What ``sampling.json`` records of a run: the settings that decide its crystals (see the module docstring).

    The official predictor and a run without a composition record no key of their own, so folders made before those
    settings existed still match."""
    sampler = {k: v for k, v in config.to_dict().items() if k != "record_every"}
    if sampler["predictor"] == "ancestral":
        del sampler["predictor"]
    record = {"seed": request.seed, "batch_size": request.batch_size, "sampler": sampler, "dtype": str(dtype),
              "num_atoms": plain(num_atoms), "allowed_elements": plain(allowed_elements),
              "properties": plain(dict(properties) if properties else None), **plain(dict(settings or {}))}
    if request.composition is not None:
        record["composition"] = request.composition.to_dict()  # type: ignore[union-attr]
        record["num_atoms"] = request.composition.num_atoms  # type: ignore[union-attr]
    if request.compositions is not None:
        record["compositions"] = [c.to_dict() for c in request.compositions]  # type: ignore[union-attr]
        record["num_atoms"] = [c.num_atoms for c in request.compositions]  # type: ignore[union-attr]
    if request.parent is not None:  # what the run started from: its hash, formula, strength, fixed sites, substitution
        record["parent"] = request.variation.record()
    if request.symmetry is not None:  # recorded only when set, as the composition
        record["symmetry"] = request.symmetry.to_dict()  # type: ignore[union-attr]
    return record


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``["sampler.num_steps: 3 -> 4", ...]``: the leaves where two nested records differ."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to add crystals to ``out`` when its ``sampling.json`` records other settings (``ValueError``)."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        if (out / "cifs").is_dir() and any((out / "cifs").glob("gen_*.cif")):
            log.warning("%s has crystals but no %s (an older run); assuming they match these settings", out, SETTINGS_FILE)
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); use a new out folder") from None
    diff = differences(old, settings)
    if diff:
        raise ValueError(f"{out} holds crystals sampled with other settings ({'; '.join(diff)}); use a new out folder")


def to_atoms(index: int, structure: "Structure") -> Any:
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.info["gen_index"] = index
    return atoms


def read_cif(path: Path) -> "Structure":
    """One of our CIFs, read back on resume; ``ValueError`` naming it when it is not one (a junk ``gen_5.cif``)."""
    import warnings

    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(path)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for a bad CIF
        raise ValueError(f"{path} is not a readable CIF ({type(exc).__name__}: {exc}); delete it and rerun to sample "
                         "that crystal again") from None


def write_cif(path: Path, structure: "Structure") -> None:
    """The Niggli-reduced cell (:func:`~mattergen_lab.structure_io.structure_to_cif`: pymatgen reads it back)."""
    from mattergen_lab.structure_io import structure_to_cif

    atomic_write_text(path, structure_to_cif(structure))


def append_extxyz(path: Path, items: list[tuple[int, "Structure"]]) -> None:
    """Append one frame per crystal, only once the whole chunk is finished."""
    if not items:
        return
    from ase.io import write

    write(path, [to_atoms(i, s) for i, s in items], format="extxyz", append=True)


def append_trajectory(traj_dir: Path, tmp_files: dict[int, str], indices: list[int], frame: "SamplerFrame") -> None:
    """Append ``frame`` to each crystal's temporary trajectory file (renamed when the chunk finishes)."""
    from ase.io import write

    for i, atoms in zip(indices, frame.batch.to_atoms()):
        if i not in tmp_files:
            fd, tmp_files[i] = tempfile.mkstemp(dir=traj_dir, prefix=f".gen_{i}.", suffix=".extxyz.tmp")
            os.close(fd)
        atoms.info.update({"step": frame.step, "t": frame.t, "final": frame.final})
        write(tmp_files[i], atoms, format="extxyz", append=True)


def repair_extxyz(extxyz: Path, cif_dir: Path) -> None:
    """Make ``extxyz`` hold exactly one frame per existing CIF (after an interrupted run)."""
    from ase.io import read, write

    done = {int(m.group(1)): p for p in cif_dir.glob("gen_*.cif") if (m := re.fullmatch(r"gen_(\d+)", p.stem))}
    try:
        frames = read(extxyz, index=":", format="extxyz") if extxyz.exists() else []
        readable = True
    except Exception:  # noqa: BLE001 - e.g. a frame truncated by a crash while appending
        frames, readable = [], False
    have = [int(a.info.get("gen_index", -1)) for a in frames]
    if readable and len(set(have)) == len(have) and set(have) <= set(done):
        missing = sorted(set(done) - set(have))
        if missing:
            log.warning("adding %d crystals missing from %s", len(missing), extxyz)
            append_extxyz(extxyz, [(i, read_cif(done[i])) for i in missing])
        return
    log.warning("%s does not match %s; rebuilding it from the CIFs", extxyz, cif_dir)
    atoms = [to_atoms(i, read_cif(done[i])) for i in sorted(done)]
    fd, tmp = tempfile.mkstemp(dir=extxyz.parent, prefix=f".{extxyz.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp, atoms, format="extxyz")
        os.replace(tmp, extxyz)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
