"""napari-hoverfast: HoverFast nuclei segmentation for whole-slide images, in napari and headless."""

__version__ = "0.1.0"
