"""ML force fields for relaxation and property oracles: which calculator, from which weights, with which cell filter.

The one place that knows how CHGNet and MatterSim are loaded. ``evaluation`` (relaxation, E_hull) and
``properties`` (bulk modulus, magnetic moments) both import it; neither imports the other for it.

* ``"chgnet"``: weights ship in its wheel, so it works offline. Its energies already include MP2020-style
  corrections; never correct them again.
* ``"mattersim"``: the paper's relaxer; raw energies. Installed with ``--no-deps`` after the ``eval`` extra
  (:data:`MATTERSIM_INSTALL`). Its weights are not in its wheel and nothing here downloads them: it needs
  ``load_path`` or the file in ``~/.local/mattersim/pretrained_models`` (where MatterSim's own download puts
  it). A file that lacks any of the network's weights is refused (MatterSim alone would leave them random).

:func:`load_chgnet` keeps up to four loaded models (``load_chgnet.cache_clear()``, or
:func:`mattergen_lab.clear_caches`, frees them).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mattergen_lab.caches import registered

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms
    from ase.calculators.calculator import Calculator

log = logging.getLogger(__name__)

CALCULATORS = ("chgnet", "mattersim")

#: MatterSim's default weights file and where MatterSim caches it.
MATTERSIM_DEFAULT_WEIGHTS = "mattersim-v1.0.0-1M.pth"
MATTERSIM_CACHE_DIR = Path("~/.local/mattersim/pretrained_models")


@registered
@functools.lru_cache(maxsize=4)
def load_chgnet(load_path: str | None = None) -> Any:
    """The CHGNet model (its wheel's weights, or ``load_path``), loaded once per path."""
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()) as out:  # CHGNet prints its banner
        model = CHGNet.from_file(load_path) if load_path else CHGNet.load(verbose=False)
    log.debug("CHGNet: %s", out.getvalue().strip())
    return model


def _chgnet_calculator(device: str, load_path: str | None) -> Calculator:
    try:
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as exc:
        raise ImportError(
            "CHGNet is not installed: pip install 'chgnet==0.4.2' (or the 'eval' extra of mattergen-lab)"
        ) from exc
    if load_path is not None and not Path(load_path).expanduser().is_file():
        raise ValueError(f"CHGNet weights {str(load_path)!r} are not a file")
    model = load_chgnet(str(Path(load_path).expanduser()) if load_path else None)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        calc = CHGNetCalculator(model=model, use_device=device)
    log.debug("CHGNet: %s", out.getvalue().strip())
    return calc


def mattersim_weights_path(load_path: str | None = None) -> Path:
    """The local MatterSim weights file; ``ValueError`` when it is not on this machine."""
    name = str(load_path) if load_path else MATTERSIM_DEFAULT_WEIGHTS
    cache_dir = _cache_dir()
    for candidate in (Path(name).expanduser(), cache_dir / Path(name).name):
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"MatterSim weights {name!r} are not available offline: not a file, and not in {cache_dir}. "
        "MatterSim downloads them on first use, which needs internet. Download them on a connected machine "
        "and pass load_path=PATH, or use get_calculator('chgnet') (CHGNet's weights ship in its wheel)."
    )


#: How to install MatterSim here (README set-up command, .ci/run): the `eval` extra carries what it imports.
MATTERSIM_INSTALL = "pip install --no-deps mattersim==1.2.3"


def _mattersim_calculator(device: str, load_path: str | None) -> Calculator:
    try:
        from mattersim.forcefield import MatterSimCalculator
    except Exception as exc:  # ImportError, or torchvision's RuntimeError (install trap)
        raise ImportError(
            f"MatterSim is not installed or does not import. Install it with `{MATTERSIM_INSTALL}` after the "
            "project's 'eval' extra (which carries everything it imports); without --no-deps, pip installs its "
            "declared torchvision/torchaudio, CUDA builds that break a CPU torch (uninstall them to recover). "
            f"Or use 'chgnet'. ({type(exc).__name__}: {exc})"
        ) from exc
    weights = mattersim_weights_path(load_path)
    checkpoint = _read_mattersim_checkpoint(weights)
    try:
        calc = MatterSimCalculator(load_path=str(weights), device=device)
    except Exception as exc:
        raise ValueError(
            f"could not load MatterSim weights from {weights}: {type(exc).__name__}: {exc}. "
            "Use get_calculator('chgnet') instead."
        ) from exc
    _check_mattersim_loaded(calc, checkpoint, weights)
    return calc


def _read_mattersim_checkpoint(weights: Path) -> dict[str, Any]:
    """The checkpoint dict, read as plain data; ``ValueError`` unless it has MatterSim's layout."""
    import torch

    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"MatterSim weights {weights} are not a readable torch checkpoint: {type(exc).__name__}: {exc}. "
                         "Use get_calculator('chgnet') instead.") from exc
    missing = [k for k in ("model_name", "model_args", "model") if not (isinstance(checkpoint, dict) and k in checkpoint)]
    if missing:
        raise ValueError(f"MatterSim weights {weights} lack {missing}: not a MatterSim checkpoint "
                         "({'model_name': 'm3gnet', 'model_args': ..., 'model': state_dict})")
    return checkpoint


def _check_mattersim_loaded(calc: Any, checkpoint: dict[str, Any], weights: Path) -> None:
    """Refuse a checkpoint that leaves weights at their random initial values.

    MatterSim loads the state dict with ``strict=False``, so a file without (some of) the network's parameters
    loads silently and predicts with random ones. Every learned parameter, and the per-element energy scale and
    shift (``normalizer.*``), must come from the file.
    """
    model = getattr(getattr(calc, "potential", None), "model", None)
    if model is None:
        return
    needed = {name for name, _ in model.named_parameters()}
    needed |= {name for name in model.state_dict() if name.startswith("normalizer.")}
    absent = sorted(needed - set(checkpoint["model"]))
    if absent:
        raise ValueError(
            f"MatterSim weights {weights} lack {len(absent)} of the network's {len(needed)} weights "
            f"(e.g. {absent[:3]}); MatterSim would leave them random. Use get_calculator('chgnet') instead."
        )


def get_calculator(name: str = "chgnet", *, device: str = "cpu", load_path: str | Path | None = None) -> Calculator:
    """An ASE calculator for an ML force field.

    Args:
        name: ``"chgnet"`` (CHGNet 0.3.0 weights from its wheel; energies include MP2020-style corrections,
            so do not correct them again) or ``"mattersim"`` (raw energies; needs its weights file).
        device: ``"cpu"``, ``"cuda"``, ...
        load_path: a weights file. CHGNet: optional. MatterSim: a path, or a file name in
            ``~/.local/mattersim/pretrained_models`` (default ``mattersim-v1.0.0-1M.pth``).

    Raises:
        ValueError: unknown name, or MatterSim weights that are missing or do not load.
        ImportError: the package is not installed (the message says how to install it).
    """
    key = str(name).lower()
    if key == "chgnet":
        return _chgnet_calculator(device, load_path)
    if key == "mattersim":
        return _mattersim_calculator(device, load_path)
    raise ValueError(f"unknown calculator {name!r}; expected one of {list(CALCULATORS)}")


def resolve_calculator(calculator: Calculator | str | None) -> Calculator:
    if calculator is None:
        return get_calculator("chgnet")
    if isinstance(calculator, str):
        return get_calculator(calculator)
    if not hasattr(calculator, "get_potential_energy"):
        raise ValueError(
            f"calculator must be an ASE calculator or one of {list(CALCULATORS)}, got {type(calculator).__name__}"
        )
    return calculator


def _cache_dir() -> Path:
    return MATTERSIM_CACHE_DIR.expanduser()


def mattersim_weights_available(load_path: str | None = None) -> bool:
    """Whether MatterSim imports and its weights file is on this machine (no download is attempted)."""
    try:
        import mattersim  # noqa: F401
    except Exception:  # noqa: BLE001 - reported, never raised
        return False
    try:
        mattersim_weights_path(load_path)
    except ValueError:
        return False
    return True


def cell_filter(atoms: "Atoms", name: str = "FrechetCellFilter") -> Any:
    """ASE's cell filter ``name`` around ``atoms`` (positions and cell relax together)."""
    from ase import filters

    return getattr(filters, name)(atoms)


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
