"""Target panel: chemistry, property sliders with on/off toggles, sampling settings, checkpoint chooser.

It only builds a :class:`~mattergen_lab.design.DesignRequest` (:meth:`TargetPanel.request`); every check is
done by :mod:`mattergen_lab.design` and shown inline (red text), never raised into the notebook.
"""

from __future__ import annotations

import html
import os

import ipywidgets as w

from mattergen_lab import design

ERROR_STYLE = "color:#c0392b"


def _error_html(message: str) -> str:
    return f"<span style='{ERROR_STYLE}'>{html.escape(message)}</span>" if message else ""


class TargetPanel(w.VBox):
    """Controls for one design request.

    Args:
        checkpoint: a registry name or path to select first (a path is added to the chooser).
        ranges: slider ranges (default :func:`mattergen_lab.design.property_ranges`).
        online: whether Hugging Face is reachable (``None``: checked once, only when needed).
        registry_path: an alternative ``checkpoints.yaml``.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        ranges: dict[str, design.PropertyRange] | None = None,
        online: bool | None = None,
        registry_path: str | os.PathLike | None = None,
    ) -> None:
        self.ranges = ranges or design.property_ranges()
        self._online = online
        self._registry_path = registry_path
        self._paths: list[str] = []

        self.chemsys = w.Text(description="Chemistry", placeholder="e.g. Li-Fe-O (empty: any)", continuous_update=False)
        self.chemsys.add_class("mgl-chemsys")
        self.picker = w.TagsInput(allowed_tags=design.allowed_elements(), allow_duplicates=False)
        self.picker.add_class("mgl-element-picker")
        self.chemsys_error = w.HTML()
        self.chemsys_error.add_class("mgl-chemsys-error")
        self.chemsys.observe(self._on_chemsys_text, "value")
        self.picker.observe(self._on_picker, "value")

        self.sliders: dict[str, w.FloatSlider] = {}
        self.toggles: dict[str, w.Checkbox] = {}
        rows = []
        for name in design.DESIGN_PROPERTIES:
            r = self.ranges[name]
            unit = f" ({r.unit})" if r.unit else ""
            toggle = w.Checkbox(value=False, description=f"{r.label}{unit}", indent=False, layout=w.Layout(width="190px"))
            toggle.add_class(f"mgl-toggle-{name}")
            slider = w.FloatSlider(value=r.default, min=r.low, max=r.high, step=r.step, disabled=True,
                                   readout_format=".4g", continuous_update=False, tooltip=r.source)
            slider.add_class(f"mgl-slider-{name}")
            toggle.observe(self._on_toggle, "value")
            self.sliders[name], self.toggles[name] = slider, toggle
            rows.append(w.HBox([toggle, slider]))

        # γ = 2 is MatterGen's README example for adapters; the library and the CLI default to 0 (unconditional).
        # It only applies to a checkpoint with adapters: an unconditional one is sampled at γ = 0, and says so.
        self.guidance = w.BoundedFloatText(value=2.0, min=0.0, max=20.0, step=0.5, description="Guidance γ",
                                           tooltip="classifier-free guidance for adapter checkpoints (MatterGen's example: 2); "
                                                   "an unconditional checkpoint ignores it")
        self.guidance.add_class("mgl-guidance")
        self.num_samples = w.BoundedIntText(value=8, min=1, max=1024, description="Samples")
        self.num_samples.add_class("mgl-num-samples")
        # The shown 200 is the bundled models' recommendation; until the user edits it, requests send None, so each
        # checkpoint runs its own recommended count (1000 for the official ones).
        self.steps = w.BoundedIntText(value=200, min=1, max=5000, description="Steps",
                                      tooltip="predictor-corrector steps; unchanged = the checkpoint's recommended count")
        self.steps.add_class("mgl-steps")
        self.steps_changed = False
        self.steps.observe(lambda _change: setattr(self, "steps_changed", True), "value")
        self.seed = w.BoundedIntText(value=0, min=0, max=2**31 - 1, description="Seed")
        self.seed.add_class("mgl-seed")
        self.every = w.BoundedIntText(value=5, min=1, max=1000, description="Frame every")
        self.batch_size = w.BoundedIntText(value=4, min=1, max=256, description="Batch size")

        self.checkpoint = w.Dropdown(description="Checkpoint", layout=w.Layout(width="95%"))
        self.checkpoint.observe(self._on_checkpoint, "value")
        self.checkpoint.add_class("mgl-checkpoint")
        self.local_path = w.Text(placeholder="local checkpoint folder or .ckpt", description="Local path")
        self.add_path = w.Button(description="Add", layout=w.Layout(width="60px"))
        self.add_path.on_click(lambda _: self.add_checkpoint_path(self.local_path.value))
        self.unavailable = w.HTML()
        self.unavailable.add_class("mgl-checkpoint-unavailable")

        from mattergen_lab.checkpoints import looks_like_path

        if checkpoint is not None and looks_like_path(checkpoint):  # a bare word is a registry name, never a folder
            if not os.path.exists(os.path.expanduser(str(checkpoint))):
                raise ValueError(f"checkpoint={str(checkpoint)!r}: no such folder or file")
            self._paths.append(str(checkpoint))
        elif checkpoint is not None:
            from mattergen_lab.checkpoints import registry

            known = registry(registry_path)
            if str(checkpoint) not in known:
                raise ValueError(f"checkpoint={str(checkpoint)!r} is neither an existing folder or file nor a registry "
                                 f"name (known: {', '.join(sorted(known))})")
        self.refresh_checkpoints(select=str(checkpoint) if checkpoint is not None else None)
        if checkpoint is not None and self.checkpoint.value != str(checkpoint):
            reasons = self.unavailable_reasons
            raise ValueError(f"checkpoint={str(checkpoint)!r} cannot be used here: "
                             f"{reasons.get(str(checkpoint), 'it serves none of the switched-on targets')}")

        super().__init__([
            w.HTML("<b>Targets</b>"),
            self.chemsys, self.picker, self.chemsys_error,
            *rows,
            w.HBox([self.guidance, self.num_samples]),
            w.HBox([self.steps, self.seed]),
            w.HBox([self.every, self.batch_size]),
            self.checkpoint,
            w.HBox([self.local_path, self.add_path]),
            self.unavailable,
        ])
        self.add_class("mgl-targets")

    # ------------------------------------------------------------------ reading the controls
    def targets(self) -> dict[str, float]:
        return {name: float(self.sliders[name].value) for name in design.DESIGN_PROPERTIES if self.toggles[name].value}

    def chemical_system(self) -> str | None:
        """The validated system (``"Fe-Li-O"``) or None when empty; ``ValueError`` names a bad element."""
        text = self.chemsys.value.strip()
        return "-".join(design.validate_chemical_system(text)) if text else None

    def request(self) -> design.DesignRequest:
        """The request the controls describe; ``ValueError`` (shown inline by the app) when invalid."""
        if not self.checkpoint.value:
            wanted = ", ".join(sorted(self.targets())) or "these targets"
            raise ValueError(f"no checkpoint can condition on {wanted}; see the unavailable checkpoints for why")
        conditional = bool(design.checkpoint_properties(self.checkpoint.value, registry_path=self._registry_path))
        return design.DesignRequest(
            checkpoint=self.checkpoint.value,
            chemical_system=self.chemical_system(),
            targets=self.targets(),
            guidance_scale=float(self.guidance.value) if conditional else 0.0,
            num_samples=int(self.num_samples.value),
            num_steps=int(self.steps.value) if self.steps_changed else None,
            seed=int(self.seed.value),
            every=int(self.every.value),
            batch_size=int(self.batch_size.value),
        )

    # ------------------------------------------------------------------ checkpoints
    def refresh_checkpoints(self, select: str | None = None) -> list[design.CheckpointOption]:
        """Offer only the checkpoints that can condition on the switched-on targets; list the others with why."""
        options = design.checkpoint_options(
            list(self.targets()), paths=self._paths, registry_path=self._registry_path, online=self._online,
        )
        usable = [(o.label + (f" — {o.note}" if o.note else ""), o.value) for o in options if o.available]
        current = select or self.checkpoint.value
        self.checkpoint.options = usable
        values = [v for _, v in usable]
        self.checkpoint.value = current if current in values else (values[0] if values else None)
        bad = [o for o in options if not o.available]
        self.unavailable.value = (
            "<details><summary>Unavailable checkpoints ({})</summary><ul>{}</ul></details>".format(
                len(bad), "".join(f"<li><b>{html.escape(o.label)}</b>: {html.escape(o.reason)}</li>" for o in bad))
            if bad else ""
        )
        self.options = options
        return options

    def add_checkpoint_path(self, path: str) -> None:
        path = path.strip()
        if not path:
            return
        if not os.path.exists(path):
            self.unavailable.value = _error_html(f"{path}: no such file or folder") + self.unavailable.value
            return
        from mattergen_lab.checkpoints import looks_like_path

        if not looks_like_path(path):  # typed as a path: keep it one, so a registry name never shadows it
            path = os.path.join(".", path)
        if path not in self._paths:
            self._paths.append(path)
        self.refresh_checkpoints(select=path)

    # ------------------------------------------------------------------ handlers
    def _on_checkpoint(self, change: dict) -> None:
        """Switching checkpoints frees the models the previous runs kept loaded (Binder has 1-2 GB)."""
        import mattergen_lab

        if change.get("old") and change.get("new") != change.get("old"):
            mattergen_lab.clear_caches()

    def _on_toggle(self, change: dict) -> None:
        for name, toggle in self.toggles.items():
            self.sliders[name].disabled = not toggle.value
        self.refresh_checkpoints()

    def _on_chemsys_text(self, change: dict) -> None:
        try:
            symbols = design.validate_chemical_system(change["new"]) if change["new"].strip() else []
        except ValueError as exc:
            self.chemsys_error.value = _error_html(str(exc))
            return
        self.chemsys_error.value = ""
        if list(self.picker.value) != symbols:
            self.picker.value = symbols

    def _on_picker(self, change: dict) -> None:
        text = "-".join(sorted(change["new"]))
        if text != "-".join(sorted(t for t in self.chemsys.value.replace(",", "-").split("-") if t.strip())):
            self.chemsys.value = text

    def set_targets(self, targets: dict[str, float]) -> None:
        """Switch on ``targets`` (others off) and set their values (for notebooks and tests)."""
        unknown = set(targets) - set(design.DESIGN_PROPERTIES)
        if unknown:
            raise ValueError(f"unknown target(s) {sorted(unknown)}; the panel offers {list(design.DESIGN_PROPERTIES)}")
        for name, value in targets.items():  # check all first: a bad value changes nothing
            slider = self.sliders[name]
            x = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
            if not slider.min <= x <= slider.max:  # NaN fails too
                raise ValueError(f"target {name}={value!r} is outside the slider range {slider.min:g}-{slider.max:g}")
        for name in design.DESIGN_PROPERTIES:
            if name in targets:
                self.sliders[name].value = float(targets[name])
        for name in design.DESIGN_PROPERTIES:
            self.toggles[name].value = name in targets

    @property
    def unavailable_reasons(self) -> dict[str, str]:
        return {o.value: o.reason for o in self.options if not o.available}
