"""IHC scoring in the dock widget, on a real Ki67 tile opened with the plugin's reader (pytest-qt under Xvfb).

The tile (``shared/data/nuclei/ihc_ki67``, BCData, DAB + haematoxylin) is written as a plain RGB TIFF
at 0.25 µm/px so HoverFast's own reader opens it, as a user opening a slide would. The shared
random-weight checkpoint's nuclei are meaningless but real: polygons over brown and blue pixels, each
with a DAB OD mean, which is all the scoring reads. Thresholds are moved, and the classes, colours,
legend, summary and the exported GeoJSON/CSV must follow without another network run.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from _plugin import configure, open_widget
from _pyramids import write_plain_tiff
from napari.utils.colormaps.standardize_color import transform_color
from PIL import Image

from napari_hoverfast._colours import IHC_CLASS, hex_colour
from napari_hoverfast._ihc import COLUMNS, region_of, summary_html, summary_rows
from napari_hoverfast._widget import SCOPE_RECTANGLES
from napari_hoverfast.core.geojson import read_geojson
from napari_hoverfast.core.ihc import CLASSES, COLORS, SCORE, IhcOptions, class_names
from napari_hoverfast.core.measurements import DAB_OD_MEAN
from napari_hoverfast.core.nuclei import Nuclei
from napari_hoverfast.core.tiling import Box

pytestmark = pytest.mark.gui

MPP = 0.25
TILE = "BCData_34_3.png"


@pytest.fixture
def ihc_tiff(shared_dir: Path, tmp_path: Path) -> Path:
    png = shared_dir / "data" / "nuclei" / "ihc_ki67" / "images" / TILE
    if not png.is_file():
        pytest.skip(f"{png} not found")
    rgb = np.asarray(Image.open(png).convert("RGB"))
    return write_plain_tiff(tmp_path / "ki67.tif", rgb, mpp=MPP)


def shown(widget, control) -> bool:
    return control.native.isVisibleTo(widget.native)


def expected_classes(nuclei: Nuclei, thresholds) -> np.ndarray:
    """The rule, from the stored DAB OD mean (what every class must equal)."""
    return class_names(IhcOptions(thresholds).score(nuclei.measurements()[DAB_OD_MEAN]))


def table_of(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """The summary table as the user reads it (row label -> its cells), and the lines after it."""
    tokens = [line.strip("\xa0 ") for line in text.splitlines() if line.strip("\xa0 ")]
    assert tuple(tokens[:len(COLUMNS)]) == COLUMNS, tokens
    rows, i = {}, len(COLUMNS)
    while i < len(tokens) and tokens[i].startswith(("Total", "Region", "Outside")):
        rows[tokens[i]] = tokens[i + 1:i + 1 + len(COLUMNS)]
        i += 1 + len(COLUMNS)
    return rows, tokens[i:]


def set_thresholds(widget, values) -> None:
    """Set 1+, 2+, 3+ as a user would, in an order that keeps them increasing at every step."""
    spins = widget.ihc_thresholds
    order = range(3) if values[0] < spins[0].value else range(2, -1, -1)
    for i in order:
        spins[i].value = values[i]


def test_ihc_thresholds_reclassify_recolour_summarise_and_export(make_napari_viewer, checkpoint, slide_cache, ihc_tiff,
                                                                 tmp_path, qupath_check):
    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(str(ihc_tiff), plugin="napari-hoverfast")
    widget = configure(open_widget(viewer), checkpoint)
    assert not shown(widget, widget.ihc)  # H&E: no IHC controls
    widget.stain.value = "ihc_dab"
    assert shown(widget, widget.ihc) and [s.value for s in widget.ihc_thresholds] == [0.2, 0.4, 0.6]

    # two regions (world µm: the tile is 128 µm square), as drawn with Draw region
    regions = widget.draw_region()
    regions.add_rectangles([np.array([[0.0, 0.0], [128.0, 64.0]]), np.array([[0.0, 64.0], [128.0, 128.0]])])
    assert widget.scope.value == SCOPE_RECTANGLES
    widget.skip_glass.value = False
    widget.run()
    layer = widget.nuclei_layer(image)
    display = widget.display(layer)
    nuclei = display.nuclei
    assert len(nuclei) > 10 and nuclei.ihc == IhcOptions()
    assert np.array_equal(nuclei.classifications(), expected_classes(nuclei, (0.2, 0.4, 0.6)))
    rows, _ = table_of(widget.ihc_summary.value)
    assert list(rows) == ["Total", "Region 1", "Region 2"]
    assert sum(int(rows[r][0]) for r in ("Region 1", "Region 2")) == int(rows["Total"][0])
    assert shown(widget, widget.ihc_summary)

    # thresholds from the data, so the classes must change; no network run (the layer's runs stay as they were)
    dab = nuclei.measurements()[DAB_OD_MEAN]
    new = tuple(float(np.round(np.quantile(dab, q), 3)) for q in (0.25, 0.5, 0.75))
    runs = list(layer.metadata["runs"])
    set_thresholds(widget, new)
    nuclei = display.nuclei
    assert nuclei.ihc.thresholds == new and layer.metadata["runs"] == runs
    classes = nuclei.classifications()
    assert np.array_equal(classes, expected_classes(nuclei, new))
    assert not np.array_equal(classes, expected_classes(nuclei, (0.2, 0.4, 0.6)))
    counts = {name: int((classes == name).sum()) for name in CLASSES}
    total = table_of(widget.ihc_summary.value)[0]["Total"]
    positive = len(nuclei) - counts["Negative"]
    h = 100 * (counts["1+"] + 2 * counts["2+"] + 3 * counts["3+"]) / len(nuclei)
    assert total == [*(str(counts[c]) for c in CLASSES), f"{100 * positive / len(nuclei):.1f} %", f"{h:.1f}"]
    assert np.allclose(layer.features[SCORE].to_numpy(), nuclei.select(display.rows(display.shown)).measurements()[SCORE])

    # thresholds that do not increase: refused with what to fix, the classes kept
    widget.ihc_thresholds[1].value = new[0] / 2
    assert "Not applied" in widget.ihc_summary.value and "must increase" in widget.ihc_summary.value
    assert display.nuclei.ihc.thresholds == new
    widget.run()
    assert "must increase" in widget.status.value
    widget.ihc_thresholds[1].value = new[1]
    assert "Total" in table_of(widget.ihc_summary.value)[0]

    # colour by IHC class: QuPath's colours per class, and the legend shows the classes, not a bar
    assert IHC_CLASS in widget.color_by.choices
    widget.color_by.value = IHC_CLASS
    shown_classes = display.nuclei.select(display.rows(display.shown)).classifications()
    edge = np.asarray(layer.edge_color)
    for name in CLASSES:
        rows = shown_classes == name
        if rows.any():
            assert np.allclose(edge[rows, :3], np.asarray(COLORS[name]) / 255, atol=1 / 255), name
    assert not shown(widget, widget.legend_bar) and shown(widget, widget.legend_text)
    assert all(name in widget.legend_text.value and hex_colour(transform_color(np.asarray(COLORS[name]) / 255)[0])
               in widget.legend_text.value for name in CLASSES)
    set_thresholds(widget, (0.2, 0.4, 0.6))  # the outlines follow the thresholds at once
    shown_classes = display.nuclei.select(display.rows(display.shown)).classifications()
    assert np.array_equal(shown_classes, expected_classes(display.nuclei.select(display.rows(display.shown)), (0.2, 0.4, 0.6)))
    edge = np.asarray(layer.edge_color)
    for name in set(shown_classes):
        assert np.allclose(edge[shown_classes == name, :3], np.asarray(COLORS[name]) / 255, atol=1 / 255), name
    viewer.window._qt_window.resize(1200, 900)
    shot = viewer.screenshot(str(tmp_path / "ihc.png"), canvas_only=False)
    assert shot.std() > 5
    if os.environ.get("HOVERFAST_SCREENSHOTS"):  # a folder to keep the picture in, to look at
        Image.fromarray(shot).save(Path(os.environ["HOVERFAST_SCREENSHOTS"]) / "widget_ihc.png")
    widget.color_by.value = "Nucleus: Area µm^2"  # numeric columns as before: a colour bar
    assert shown(widget, widget.legend_bar) and "Nucleus: Area µm^2" in widget.legend_text.value
    widget.color_by.value = IHC_CLASS

    # edits: a deleted nucleus leaves the summary, a drawn one is counted as not scored
    set_thresholds(widget, new)
    n = len(display.nuclei)
    layer.selected_data = {0}
    layer.remove_selected()
    assert len(display.nuclei) == n - 1
    assert sum(int(c) for c in table_of(widget.ihc_summary.value)[0]["Total"][:4]) == n - 1
    layer.add_polygons([np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])])
    rows, after = table_of(widget.ihc_summary.value)
    assert len(display.nuclei) == n and sum(int(c) for c in rows["Total"][:4]) == n - 1
    assert after[0].startswith("1 without a DAB OD mean")

    # the export carries the classes of the thresholds set now (the container is the source of truth)
    written = widget.export(tmp_path / "ki67_nuclei.geojson")
    geojson, csv_path, sidecar = (tmp_path / f"ki67_nuclei{s}" for s in (".geojson", ".csv", ".run.json"))
    assert set(written) >= {geojson, csv_path, sidecar}
    check = qupath_check(geojson, "--expect-type", "detection")
    assert check.returncode == 0, check.stdout
    objs = read_geojson(geojson)
    expected = display.nuclei.classifications()
    scored = expected != None  # noqa: E711 - elementwise: the drawn nucleus has no IHC class
    assert [o.classification for o, ok in zip(objs, scored, strict=True) if ok] == list(expected[scored])
    colours = {o.classification: tuple(o.classification_color) for o in objs if o.classification in COLORS}
    assert colours and all(colours[name] == COLORS[name] for name in colours)
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    scores = [float(r[SCORE]) if r[SCORE] not in ("", "nan", "NaN") else np.nan for r in rows]
    assert np.allclose(scores, display.nuclei.measurements()[SCORE], equal_nan=True)
    record = json.loads(sidecar.read_text())
    assert record["ihc"]["thresholds"] == list(new)
    assert record["ihc"]["Num Positive"] == int((expected[scored] != "Negative").sum())


def test_summary_per_region_and_outside(qapp):
    """The summary text alone: total, one line per region (first region wins), the nuclei outside."""
    import shapely

    nuclei = Nuclei(MPP, ihc=IhcOptions(), extra_columns=[DAB_OD_MEAN])
    squares = [shapely.box(x, 0, x + 4, 4) for x in (0, 10, 20, 30, 110)]
    nuclei.append(squares, 1.0, 0, measurements={DAB_OD_MEAN: [0.1, 0.3, 0.5, 0.7, 0.9]})
    regions = [Box(0, 0, 25, 10), Box(20, 0, 20, 10)]
    assert region_of(nuclei, regions).tolist() == [0, 0, 0, 1, -1]
    rows = summary_rows(nuclei, regions)
    assert [label for label, _ in rows] == ["Total", "Region 1", "Region 2", "Outside"]
    assert [(r.scored, r.positive) for _, r in rows] == [(5, 4), (3, 2), (1, 1), (1, 1)]
    table, after = table_of(_plain(summary_html(rows)))
    assert table["Total"] == ["1", "1", "1", "2", "80.0 %", "180.0"] and not after
    assert [label for label, _ in summary_rows(nuclei, regions[:1])] == ["Total"]  # one region: the total says it


def _plain(html: str) -> str:
    """What a Qt text box shows of ``html``, as plain text."""
    from qtpy.QtGui import QTextDocument

    document = QTextDocument()
    document.setHtml(html)
    return document.toPlainText()
