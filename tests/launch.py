"""Running a training script in a subprocess, on one process or several (`accelerate launch`; gloo on a CPU).

A run that outlives its timeout is not just killed: every Python process it started first gets SIGABRT, so that
faulthandler prints the stacks of all their threads into the failure (a hung collective or teardown then says
where it hung), and no worker is left behind holding a port or a core for the tests that follow.
"""
import os
import signal
import subprocess
import sys

from pathlib import Path

import psutil
import pytest

HUNG_RUN_GRACE_SECONDS = 30
TEARDOWN_CHECK = Path(__file__).with_name("ddp_teardown_check.py")


def launch_command(script, processes=1):
    """The command that runs `script` on `processes` CPU processes; several go through ddp_teardown_check.py,
    which fails the run if a DistributedDataParallel wrapper outlives training (each process prints its MARKER)."""
    if processes == 1:
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(TEARDOWN_CHECK),
            str(script)]


def run_script(command, cwd, timeout=900):
    """Run `command` (a list) to completion; fail the test with its stderr if it fails, or with the stacks of all
    its processes if it hangs. Returns the `subprocess.CompletedProcess`."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # stacks on SIGABRT, also in the workers (they inherit env)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          env=env) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stdout, stderr = _abort_tree(process)
            pytest.fail(f"{' '.join(map(str, command[:6]))} ... did not finish in {timeout} s; the stacks of its "
                        f"processes (faulthandler):\n{stderr[-12000:]}\n--- stdout ---\n{stdout[-2000:]}")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _abort_tree(process):
    """SIGABRT to the launcher's descendants (workers run in sessions of their own), then to the launcher; SIGKILL
    to whatever is left after the grace period. Returns what the processes printed."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for child in (*reversed(descendants), psutil.Process(process.pid)):
        try:
            child.send_signal(signal.SIGABRT)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(descendants, timeout=HUNG_RUN_GRACE_SECONDS)
    for child in alive:
        child.kill()
    try:
        return process.communicate(timeout=HUNG_RUN_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()
