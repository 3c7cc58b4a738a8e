"""One QApplication for every GUI test (offscreen, see Testing/conftest.py), created before any QProcess.

Widgets need a QApplication; the job runner alone would make a QCoreApplication, and a process can hold only one.
"""

import pytest


@pytest.fixture(scope="session", autouse=True)
def qapp():
    from Qt import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    assert isinstance(app, QtWidgets.QApplication), "a QCoreApplication was created before the GUI tests"
    return app
