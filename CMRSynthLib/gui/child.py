"""Entry point of a job started by the GUI: ``python -m CMRSynthLib.gui.child <command> ...``.

It is the ``cmrsynth`` command plus one thing: on POSIX the job first becomes the leader of its own process
group, so Cancel can signal the whole tree (the job and any worker it starts) with one ``killpg``.
"""

import os
import sys

from CMRSynthLib.cli import main

if __name__ == "__main__":
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    sys.exit(main())
