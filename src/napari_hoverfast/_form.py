"""The dock widget's controls: what each is, what it says when hovered, and where it sits.

Only construction and layout: the behaviour is in ``_widget.py``. The controls are attributes of a
magicgui ``Container`` (the napari plugin template's pattern), so tests set ``.value`` and press
buttons as a user would. Units are written one way throughout, as the measurements name them
("µm^2", "µm/px"). Device, batch size, tile size and the cache sit under "Advanced"; the IHC
thresholds (1+, 2+, 3+) and the positivity summary show only with the IHC stain.
"""

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
    TextEdit,
)

from ._colours import SINGLE_COLOURS, colour_choices
from .core.ihc import CLASSES, DEFAULT_THRESHOLDS
from .core.limits import DEFAULT_MEMORY_GB, DEFAULT_TILE
from .core.nuclei import AREA_UM2, Nuclei

SCOPE_RECTANGLES = "Rectangles in a Shapes layer"
SCOPE_VIEW = "Current view"
SCOPE_WHOLE = "Whole slide"
MODEL_DEFAULT = "Embedded default"
MODEL_FILE = "Checkpoint file (.pth)"


def _tip(widget, text: str):  # noqa: ANN001, ANN202 - any magicgui widget, returned as given
    widget.tooltip = text
    return widget


def _note(lines: int, tooltip: str) -> TextEdit:
    """Read-only text that wraps to the dock's width and is as tall as its text, up to ``lines`` lines.

    A word-wrapped QLabel in napari's dock keeps the height of its first layout and clips what wraps
    further; a frameless read-only text box sized from its document follows every change of width.
    """
    note = TextEdit(label="", value="", tooltip=tooltip)
    note.read_only = True
    native = note.native
    native.setFrameStyle(0)
    native.setStyleSheet("QTextEdit { background: transparent; }")
    from qtpy.QtCore import Qt

    native.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # a bar would narrow it: more lines
    native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    native.document().setDocumentMargin(1)
    most = native.fontMetrics().lineSpacing() * lines + 4

    def fit(size: object) -> None:
        native.setFixedHeight(int(min(size.height() + 4, most)))  # type: ignore[attr-defined]

    native.document().documentLayout().documentSizeChanged.connect(fit)
    fit(native.document().size())
    return note


def _line(label: Label) -> Label:
    """A one-line label that takes the row's width, left-aligned (its text changes after layout)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    label.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    return label


def _full_width(widget) -> None:  # noqa: ANN001 - a magicgui widget inside a labelled container
    """No label column beside ``widget`` (magicgui keeps one, empty, for every widget it labels)."""
    labelled = getattr(widget, "_labeled_widget_ref", None)
    holder = labelled() if labelled is not None else None
    if holder is not None:
        holder._label_widget.native.setVisible(False)


def _heading(text: str) -> Label:
    return _line(Label(label="", value=f"<b>{text}</b>"))


class HoverFastForm(Container):
    """Every control of the dock widget, laid out; no behaviour."""

    def __init__(self, *, has_default_model: bool) -> None:
        super().__init__(scrollable=False)
        t = _tip
        self.image = t(ComboBox(label="Image"), "The image to segment. Layers HoverFast made (nuclei, overlays) are not offered.")
        self.pixel_size = t(FloatSpinBox(label="Pixel size (µm/px)", value=0.0, min=0.0, max=20.0, step=0.001),
                            "µm per pixel of the scan at full resolution (0.25 at 40×, 0.5 at 20×). Shown only when the "
                            "image does not say it; a run needs it: areas and the model's working resolution follow from it.")
        self.pixel_hint = _note(9, "Why the pixel size is asked for, and where it may be found.")
        models = [MODEL_DEFAULT, MODEL_FILE] if has_default_model else [MODEL_FILE]
        self.model_choice = t(ComboBox(label="Model", choices=models, value=models[0]),
                              "The network: the model embedded in the plugin, or a HoverFast checkpoint of your own.")
        self.model_path = t(FileEdit(label="Checkpoint", mode="r", filter="*.pth", nullable=True),
                            "A HoverFast checkpoint (.pth, or .safetensors weights).")
        self.model_info = _note(4, "The model a run uses.")
        self.scope = t(ComboBox(label="Scope", choices=[SCOPE_VIEW, SCOPE_RECTANGLES, SCOPE_WHOLE], value=SCOPE_VIEW),
                       "What to segment: what the canvas shows now, the rectangles you drew, or all tissue of the slide "
                       "(tiles nearest the view first).")
        self.shapes_layer = t(ComboBox(label="Rectangles", nullable=True),
                              "The Shapes layer whose shapes (their bounding boxes) are the regions to segment.")
        self.draw_button = t(PushButton(text="Draw region"),
                             "Add (or select) this image's regions layer and start drawing a rectangle on the canvas.")
        self.skip_glass = t(CheckBox(text="Skip glass", value=True),
                            "Segment only tiles that touch tissue (the slide's tissue mask); glass is left out.")
        self.stain = t(ComboBox(label="Stain", choices=[("H&E", "he"), ("IHC (DAB)", "ihc_dab")], value="he"),
                       "H&E, or IHC with a DAB stain (the haematoxylin channel is segmented).")
        self.ihc_thresholds = tuple(
            t(FloatSpinBox(label=f"{name} from DAB OD", value=value, min=0.0, max=3.0, step=0.05),
              f"Nuclei whose DAB OD mean is at least this are {name} or above (QuPath's default {value:g}). "
              "The classes, colours and summary follow at once, without the network.")
            for name, value in zip(CLASSES[1:], DEFAULT_THRESHOLDS, strict=True))
        for spin in self.ihc_thresholds:
            spin.native.setDecimals(3)
        self.ihc_summary = _note(14, "IHC positivity of the nuclei shown: counts per class, % positive and H-score, "
                                    "in total and per region (QuPath's positive cell detection).")
        self.ihc = Container(labels=False, visible=False, widgets=[
            _heading("IHC scoring (DAB OD mean, live)"), Container(widgets=self.ihc_thresholds), self.ihc_summary])
        self.min_area = t(FloatSpinBox(label="Min area (µm^2)", value=5.0, min=0.0, max=1000.0, step=0.5),
                          "Nuclei smaller than this are dropped. Changing it updates the nuclei from the cache in seconds.")
        self.max_area = t(FloatSpinBox(label="Max area (µm^2)", value=0.0, min=0.0, max=100000.0, step=10.0),
                          "Nuclei larger than this are dropped (0: no maximum). Updates from the cache, like Min area.")
        self.threshold = t(FloatSpinBox(label="Probability threshold", value=0.5, min=0.05, max=0.95, step=0.05),
                           "Pixels whose nucleus probability is above this are nucleus. Lower: larger and more nuclei. "
                           "Updates from the cache, without running the network.")
        self.run_button = t(PushButton(text="Run"), "Segment the scope with these settings. After Cancel, Run continues "
                            "where it stopped (tiles done come from the cache).")
        self.cancel_button = t(PushButton(text="Cancel", enabled=False),
                               "Stop after the batch in progress; the nuclei found so far stay.")
        self.progress = t(ProgressBar(label="", value=0, min=0, max=1, visible=False), "Tiles done of the run's tiles.")
        self.status = _note(8, "What the last run did: tiles, nuclei this run and per region, the layer's total.")
        columns = colour_choices(Nuclei(0.25).measurements())  # more appear with the results' own columns
        self.color_by = t(ComboBox(label="Colour by", choices=columns, value=AREA_UM2),
                          "Colour the outlines by a measurement (every numeric column of the results), or one colour.")
        self.single_colour = t(ComboBox(label="Colour", choices=list(SINGLE_COLOURS), value=next(iter(SINGLE_COLOURS))),
                               "The outline colour when colouring by one colour.")
        self.legend_bar = t(Label(label="", value=""), "The colour scale: low values on the left, high on the right.")
        self.legend_text = _line(Label(label="", value=""))
        self.show_tissue = t(CheckBox(text="Show tissue mask", value=False),
                             "Show in green where the slide's tissue is (what Skip glass keeps).")
        self.show_coverage = t(CheckBox(text="Show tiles done", value=False),
                               "Show the tiles segmented so far: blue, or cyan where their maps are in the cache.")
        self.nucleus_info = _line(Label(label="", value="Click a nucleus to see its measurements"))
        self.nucleus_table = t(Table(value={"Measurement": [], "Value": []}),
                               "Every measurement of the nucleus clicked last (the columns the export writes).")
        self.nucleus_table.read_only = True
        rows = self.nucleus_table.native.verticalHeader()
        rows.setVisible(False)
        rows.setDefaultSectionSize(self.nucleus_table.native.fontMetrics().lineSpacing() + 4)  # compact rows
        self.nucleus_table.native.setMinimumHeight(7 * rows.defaultSectionSize())
        self.nucleus_table.native.setMaximumHeight(260)
        self.nucleus_table.native.horizontalHeader().setStretchLastSection(True)
        from qtpy.QtCore import Qt

        self.nucleus_table.native.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.nucleus_table.visible = False
        self.export_button = t(PushButton(text="Export GeoJSON + CSV…"),
                               "Write the nuclei layer as QuPath GeoJSON, its measurements as CSV, and the run's "
                               "parameters (.run.json) beside them.")
        self.show_advanced = t(CheckBox(text="Advanced settings", value=False),
                               "Device, batch size, tile size, network memory and the tile cache.")
        self.device = t(ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto"),
                        "Where the network runs: auto picks a GPU when there is one.")
        self.batch_size = t(SpinBox(label="Batch size (0: auto)", value=0, min=0, max=256),
                            "Tiles per forward pass (0: chosen for the device). Larger needs more GPU memory.")
        self.tile_size = t(SpinBox(label="Tile size (px)", value=DEFAULT_TILE, min=128, max=4096, step=64),
                           "Largest square a tile keeps nuclei from, in working pixels; on a CPU at most what the network memory holds. "
                           "Changing it invalidates the cached tiles.")
        self.memory_gb = t(FloatSpinBox(label="Network memory (GB)", value=DEFAULT_MEMORY_GB, min=0.5, max=256.0, step=0.5),
                           "On a CPU, tiles shrink so that one forward pass fits this: float32 (CPUs without bf16) "
                           "needs about twice the memory of bf16. Changing it may change the tiles, and so the cache.")
        self.use_cache = t(CheckBox(text="Keep the network's output (resume, re-threshold)", value=True),
                           "Keep each tile's network output on disk (5 GB at most), so Run continues after Cancel and "
                           "threshold changes update in seconds.")
        self.clear_cache_button = t(PushButton(text="Clear cache"), "Delete every cached tile.")
        self.advanced = Container(widgets=[self.device, self.batch_size, self.tile_size, self.memory_gb, self.use_cache,
                                           self.clear_cache_button], visible=False)
        self.extend([
            self.image, self.pixel_size, self.pixel_hint, self.model_choice, self.model_path, self.model_info,
            self.scope, self.shapes_layer, self.draw_button, self.skip_glass, self.stain,
            _heading("Thresholds (live, from the cache)"), self.min_area, self.max_area, self.threshold,
            self.run_button, self.cancel_button, self.progress, self.status, self.ihc,
            _heading("Display"), self.color_by, self.single_colour, self.legend_bar, self.legend_text,
            self.show_tissue, self.show_coverage, self.nucleus_info, self.nucleus_table,
            self.export_button, self.show_advanced, self.advanced,
        ])
        _full_width(self.ihc)  # the summary's table needs the dock's width
        self.show_advanced.changed.connect(lambda on: setattr(self.advanced, "visible", bool(on)))
        self.stain.changed.connect(lambda *_: setattr(self.ihc, "visible", self.stain.value == "ihc_dab"))

    def set_running(self, running: bool) -> None:
        """Run and Cancel, the progress bar and the controls a run reads, for a run starting or ending."""
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.progress.visible = True

    def reset_progress(self) -> None:
        """An error or a refused run: no bar left standing at a count that is not true."""
        self.progress.value = 0
        self.progress.visible = False
