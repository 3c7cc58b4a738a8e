"""The ``cmrsynth`` commands, one module each, and the progress protocol they report through.

Every command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args, progress) -> int``. Modules import heavy libraries (torch, MONAI) inside ``run`` so that
``cmrsynth --help`` stays instant.
"""
