"""Entry point of a job started by the GUI: ``python -m CMRSynthLib.gui.child <command> --progress jsonl ...``.

It is the ``cmrsynth`` command plus two things, both for Cancel:

1. On POSIX the job becomes the leader of its own process group, so one ``killpg`` reaches it and every worker
   it starts.
2. Before anything else (importing torch takes seconds) it reports its pid and that group in a first ``start``
   event. The GUI may have started it through a launcher: Slicer's ``PythonSlicer`` is CTK's AppLauncher, which
   runs the real interpreter as its own child and forwards no signal, so the pid the GUI holds is not the job's.
   :class:`~CMRSynthLib.gui.jobs.JobRunner` signals the group reported here.
"""

import os
import sys

from CMRSynthLib.jobs.progress import Progress


def lead_process_group() -> dict:
    """Make this process the leader of a new process group → ``{"pid": ..., "pgid": ...}`` to report.

    ``pgid`` is None where there are no process groups (Windows), or if the group could not be made.
    """
    pid = os.getpid()
    if not hasattr(os, "setpgid"):
        return {"pid": pid, "pgid": None}
    if os.getpgid(0) != pid:  # (a session leader already leads its group and may not move)
        os.setpgid(0, 0)
    return {"pid": pid, "pgid": pid if os.getpgid(0) == pid else None}


if __name__ == "__main__":
    process = lead_process_group()
    Progress("jsonl").start(sys.argv[1] if len(sys.argv) > 1 else "cmrsynth", **process)

    from CMRSynthLib.cli import main

    sys.exit(main())
