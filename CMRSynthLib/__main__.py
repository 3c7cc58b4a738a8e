"""``python -m CMRSynthLib`` is the ``cmrsynth`` command (also what torchrun launches)."""

import sys

from CMRSynthLib.cli import main

sys.exit(main())
