"""CMRSynth: synthetic cardiac MRI from masks and vendor style, with differential privacy and an audit.

The engine of the CMRSynth Slicer extension. Pure Python: it never imports ``slicer`` and works alone
from the command line (``cmrsynth``), from Python, and from Slicer's Python console.
"""

__version__ = "0.1.0"
# The starter `cmrsynth sample` and the panel use when no model is named: the best real one
# (training/starters.py). Kept here, free of torch, so the panel can list models before torch is installed.
DEFAULT_MODEL = "acdc-ldm"
