"""CMRSynth's benchmark suite: speed, memory and quality side by side (``python -m benchmarks``, ``make bench``).

Sections: ``sampling``, ``training``, ``dp``, ``3d``, ``scaling``, ``quality``, ``optimisations``; each is a
module with ``run(settings, context) -> list[Table]``. See ``benchmarks/__main__.py`` for the options.
"""
