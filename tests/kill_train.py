"""Run train_lift with kill callbacks installed (used by tests/test_train_resume.py as a subprocess).

    python tests/kill_train.py --kill_after_steps N | --kill_in_save_at_step N  <train_lift.py flags>

SIGKILLs this process right after optimiser step N, or between writing the checkpoint of step N and renaming it into
place. The hooks are :class:`liftkit.train.config.TrainHooks` callbacks; production code has no kill switch.
"""

import argparse
import os
import signal
import sys

from liftkit.cli.train import main
from liftkit.train.config import TrainHooks


def _kill(*_):
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--kill_after_steps", type=int, default=None)
    p.add_argument("--kill_in_save_at_step", type=int, default=None)
    ours, rest = p.parse_known_args(sys.argv[1:])
    hooks = TrainHooks(
        after_step=(lambda step: _kill() if step == ours.kill_after_steps else None),
        before_checkpoint_replace=(lambda step, tmp: _kill() if step == ours.kill_in_save_at_step else None),
    )
    raise SystemExit(main(rest, hooks=hooks))
