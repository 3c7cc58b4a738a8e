"""``cmrsynth gui``: the CMRSynth panel in a plain Qt window, working on files (the panel Slicer also shows)."""

from __future__ import annotations

HELP = "open the CMRSynth panel (Generate, Train & DP, Audit, Reader study) in a window"


def add_arguments(parser) -> None:
    parser.add_argument("--model-folder", default=None,
                        help="where trained models are kept (default: $CMRSYNTH_MODEL_FOLDER or ~/.cmrsynth/models)")
    parser.add_argument("--tab", choices=("generate", "train", "audit", "reader"), default="generate",
                        help="the tab to open first")


def run(args, progress) -> int:
    import sys

    from CMRSynthLib.errors import InputError

    try:
        from CMRSynthLib.gui.qt import QtWidgets
    except ImportError as exc:
        raise InputError(f"the panel needs Qt for Python: pip install 'cmrsynth[gui]' ({exc})") from None
    from CMRSynthLib.gui.panel import CMRSynthPanel
    from CMRSynthLib.gui.widgets import JobContext

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    context = JobContext()
    if args.model_folder:
        context.model_folder = lambda: args.model_folder
    panel = CMRSynthPanel(context)
    panel.setCurrentIndex(("generate", "train", "audit", "reader").index(args.tab))
    panel.setWindowTitle("CMRSynth")
    panel.resize(560, 820)
    panel.show()
    return int(app.exec())
