"""The npe2 manifest: valid, and every python_name it names imports to a callable."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import napari_hoverfast

MANIFEST = Path(napari_hoverfast.__file__).with_name("napari.yaml")


def _manifest():
    npe2 = pytest.importorskip("npe2")
    return npe2.PluginManifest.from_file(MANIFEST)


def test_every_python_name_imports():
    manifest = _manifest()
    names = [command.python_name for command in manifest.contributions.commands]
    assert len(names) == 6
    for name in names:
        module, _, attribute = name.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name


def test_contributions():
    contributions = _manifest().contributions
    assert [w.display_name for w in contributions.widgets] == ["HoverFast nuclei"]
    [writer] = contributions.writers
    assert writer.layer_types == ["shapes"] and set(writer.filename_extensions) == {".geojson", ".geojson.gz", ".json", ".json.gz"}
    assert {s.key for s in contributions.sample_data} == {"tcga_tile", "small_slide"}
    assert len(contributions.readers) == 2


@pytest.mark.gui
def test_widget_docks_from_the_plugin_menu(make_napari_viewer):
    from napari_hoverfast._widget import HoverFastWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-hoverfast", "HoverFast nuclei")
    assert isinstance(widget, HoverFastWidget)
