"""The CMRSynth panel without Slicer: job runner, controller, panel widgets, reader study.

Nothing here imports ``slicer``. Qt comes through :mod:`CMRSynthLib.gui.qt`, which picks Slicer's PythonQt
when it runs inside Slicer and Qt.py (PySide6/PyQt) elsewhere, so the same runner and panel serve both.
The controller, catalogue, reader-study and scene modules use no Qt at all and are tested on their own.
"""
