"""Run a training script (argv[1], its arguments after it) and check, when it ends training, that no
DistributedDataParallel wrapper is alive: its reducer would then be the process group's last owner and could join
gloo's worker threads holding the GIL they need (a rare hang at exit; examples/train.py frees the wrapper first).
Prints one line per process that passed the check."""
import gc
import os
import runpy
import sys

from accelerate import Accelerator
from torch.nn.parallel import DistributedDataParallel

MARKER = "no DDP wrapper alive at end_training"
_end_training = Accelerator.end_training


def end_training(self):
    # no gc.collect() here: a wrapper that only a later collection would free counts as alive
    alive = [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
    if alive:
        raise RuntimeError(f"{len(alive)} DistributedDataParallel wrapper(s) alive when training ends")
    if self.num_processes > 1:
        print(MARKER, flush=True)
    return _end_training(self)


if __name__ == "__main__":
    Accelerator.end_training = end_training
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as if the script ran directly: its folder first
    runpy.run_path(sys.argv[0], run_name="__main__")
