"""CMRSynth: synthetic cardiac MRI from masks and vendor style, with differential privacy and an audit.

The engine of the CMRSynth Slicer extension. Pure Python: it never imports ``slicer`` and works alone
from the command line (``cmrsynth``), from Python, and from Slicer's Python console.
"""

__version__ = "0.1.0"
