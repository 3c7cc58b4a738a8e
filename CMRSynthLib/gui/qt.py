"""One import for Qt in both homes of the panel: Slicer's PythonQt (module ``qt``) or Qt.py elsewhere.

PythonQt puts every class in one module ``qt``; Qt.py splits them into QtCore/QtGui/QtWidgets. Code in
this package writes ``QtCore.QProcess``, ``QtWidgets.QLabel``, ... and uses only what both bindings offer:
signals connected with ``signal.connect(callable)``, setters called as methods, getters through
:func:`read`, and no Python-defined Qt signals (PythonQt lacks them).
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

__all__ = ["BINDING", "QtCore", "QtGui", "QtWidgets", "read", "to_bytes"]


def read(widget, name: str):
    """A Qt property's value: PythonQt exposes ``widget.text`` as a value, PySide6 as a getter method
    (``text()``, or ``isEnabled()`` for the property ``enabled``)."""
    value = getattr(widget, name, None)
    if value is None:
        value = getattr(widget, "is" + name[0].upper() + name[1:])
    return value() if callable(value) else value


def to_bytes(data) -> bytes:
    """A QByteArray (either binding) or bytes as ``bytes``."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if hasattr(data, "data"):
        raw = data.data()
        return raw.encode() if isinstance(raw, str) else bytes(raw)
    return bytes(data)
