"""``python -m napari_hoverfast``: the same command line as ``napari-hoverfast``."""

import sys

from napari_hoverfast.cli import main

if __name__ == "__main__":
    sys.exit(main())
