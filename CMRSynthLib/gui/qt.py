"""One import for Qt in both homes of the panel: Slicer's PythonQt (module ``qt``) or Qt.py elsewhere.

PythonQt puts every class in one module ``qt``; Qt.py splits them into QtCore/QtGui/QtWidgets. Code in
this package writes ``QtCore.QProcess``, ``QtWidgets.QLabel``, ... and uses only what both bindings offer:
signals connected with ``signal.connect(callable)``, no Python-defined Qt signals (PythonQt lacks them).
"""

from __future__ import annotations

try:  # inside Slicer
    import qt as _pythonqt

    if not hasattr(_pythonqt, "QProcess"):
        raise ImportError("module 'qt' is not PythonQt")
    QtCore = QtGui = QtWidgets = _pythonqt
    BINDING = "PythonQt"
except ImportError:
    import Qt as _qtpy
    from Qt import QtCore, QtGui, QtWidgets

    BINDING = _qtpy.__binding__

__all__ = ["BINDING", "QtCore", "QtGui", "QtWidgets", "to_bytes"]


def to_bytes(data) -> bytes:
    """A QByteArray (either binding) or bytes as ``bytes``."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if hasattr(data, "data"):
        raw = data.data()
        return raw.encode() if isinstance(raw, str) else bytes(raw)
    return bytes(data)
