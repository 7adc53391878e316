"""A launcher prefix for tests: ``python launch_recorder.py <log> <command...>``.

Appends the command's ``pipelines.<module>`` to ``<log>``, then becomes the command (exec), as
``srun`` or ``torchrun`` would start it.
"""

import os
import sys

log, cmd = sys.argv[1], sys.argv[2:]
with open(log, "a", encoding="utf-8") as fh:
    fh.write(cmd[cmd.index("-m") + 1] + "\n")
os.execvp(cmd[0], cmd)
