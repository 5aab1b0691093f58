"""The widget's model: loaded once per file and device, described in a line, errors said plainly. No Qt here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._scope import UserError


class ModelLoader:
    """Keeps the last model loaded; loads again only when the file or the device changes."""

    def __init__(self) -> None:
        self.model: Any = None
        self._key: tuple[str | None, str] | None = None

    def forget(self, *_: Any) -> None:
        self.model, self._key = None, None

    def load(self, source: str | None, device: str) -> Any:
        """The model of ``source`` (``None``: the embedded default) on ``device``; UserError with the loader's message."""
        from .core.default_model import load_model
        from .core.device import DeviceError
        from .core.model import CheckpointError

        key = (source, device)
        if self.model is None or self._key != key:
            self.forget()
            try:
                self.model = load_model(source, device=device)
            except (CheckpointError, DeviceError, OSError) as exc:
                raise UserError(str(exc)) from None
            self._key = key
        return self.model


def describe(model: Any) -> str:
    """One line about a loaded model: file, depth, width, parameters, device."""
    c = model.config
    return (f"{Path(model.source).name} · depth {c.depth}, width {2 ** c.wf} (wf {c.wf}) · "
            f"{model.parameter_count:,} parameters · {model.device.type}")


class ModelControls:
    """The form's Model, Checkpoint and Device fields: what to load, and the line saying what was loaded."""

    def __init__(self, form: Any) -> None:
        self.form = form
        self.loader = ModelLoader()
        form.model_choice.changed.connect(self._on_choice)
        form.model_path.changed.connect(self._on_path)
        form.device.changed.connect(self.loader.forget)
        self._on_choice(form.model_choice.value)

    def _on_choice(self, choice: str) -> None:
        from ._form import MODEL_DEFAULT, MODEL_FILE

        f = self.form
        f.model_path.visible = choice == MODEL_FILE
        self.loader.forget()
        if choice == MODEL_DEFAULT:
            f.model_info.value = "Embedded default model (loads on first run)"
        elif f.model_path.value is not None and Path(f.model_path.value).is_file():
            self.load_chosen(report=True)
        else:
            f.model_info.value = "Choose a HoverFast checkpoint (.pth)"

    def _on_path(self, path: Any) -> None:
        self.loader.forget()
        if path is not None and str(path) not in ("", "."):
            self.load_chosen(report=True)

    def load_chosen(self, *, report: bool = False) -> Any:
        """The chosen model, described in the form; UserError (or, with ``report``, None and the message shown)."""
        from ._form import MODEL_FILE

        f = self.form
        try:
            source = None
            if f.model_choice.value == MODEL_FILE:
                path = f.model_path.value
                if path is None or str(path) in ("", "."):
                    raise UserError("Choose a HoverFast checkpoint (.pth) first")
                source = str(path)
            try:
                model = self.loader.load(source, str(f.device.value))
            except UserError:
                f.model_info.value = "No model loaded"
                raise
        except UserError as exc:
            if not report:
                raise
            f.report(str(exc))
            return None
        f.model_info.value = describe(model)
        return model
