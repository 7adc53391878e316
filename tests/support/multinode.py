"""Launch a stage as N single-process "nodes" on this machine, with the environment torchrun sets.

Each process gets ``MASTER_ADDR=127.0.0.1``, a shared free ``MASTER_PORT``, ``WORLD_SIZE=N``,
``RANK=NODE_RANK=GROUP_RANK=<node>``, ``LOCAL_RANK=0`` and ``LOCAL_WORLD_SIZE=1``: what torchrun
(or ``srun`` + torchrun) gives one process per node, so Lightning picks its torchelastic cluster
environment and joins a gloo group, exactly as across real nodes sharing a file system.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_nodes(module: str, args: list[str], nodes: int = 2, timeout: int = 300) -> list[str]:
    """Run ``python -m <module> *args num_nodes=N`` as ``nodes`` processes; return their logs.

    Raises:
        AssertionError: a process exited non-zero (with its log tail).
    """
    port = str(free_port())
    procs = []
    for node in range(nodes):
        env = {**os.environ, "WANDB_MODE": "disabled", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "WORLD_SIZE": str(nodes), "RANK": str(node),
               "NODE_RANK": str(node), "GROUP_RANK": str(node), "LOCAL_RANK": "0",
               "LOCAL_WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
        cmd = [sys.executable, "-m", module, *args]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    logs = []
    for node, proc in enumerate(procs):
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"node {node} did not finish in {timeout} s") from None
        logs.append(out)
        assert proc.returncode == 0, f"node {node} exited {proc.returncode}:\n{out[-3000:]}"
    return logs
