"""Test helper: the pretrain stage with a fault injected into one DDP process.

``python tests/pretrain/inject_fault.py MODE RANK STEP key=value ...`` runs ``pipelines.pretrain``
with the given overrides. In the process of global rank RANK, the DINO loss of optimizer step
STEP is made NaN (MODE ``nan``) or raises a RuntimeError (MODE ``raise``); every other loss is
untouched. Lightning starts the other DDP processes with this same command line, so each of
them installs the same patch and only rank RANK acts on it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's `pipelines`

import torch.distributed as dist  # noqa: E402
from pipelines.pretrain import main  # noqa: E402

from hipt.cli import main_guard  # noqa: E402
from hipt.pretrain.loss import DinoCriterion  # noqa: E402


def install(mode: str, rank: int, step: int) -> None:
    """Patch ``DinoCriterion.forward`` (one call per optimizer step) to fail as described."""
    forward = DinoCriterion.forward
    calls = [0]

    def faulty(self, teacher_out, student_out, epoch):
        loss = forward(self, teacher_out, student_out, epoch)
        at, calls[0] = calls[0], calls[0] + 1
        if at != step or dist.get_rank() != rank:
            return loss
        if mode == "raise":
            raise RuntimeError(f"injected fault on rank {rank} at step {step}")
        return loss * float("nan")

    DinoCriterion.forward = faulty


if __name__ == "__main__":
    mode, rank, step, *overrides = sys.argv[1:]
    install(mode, int(rank), int(step))
    main_guard(main(overrides))
