"""The subprocess runner of the end-to-end training tests (tests/launch.py) on a run that hangs."""
import sys

import psutil
import pytest

from launch import run_script

HANGING_SCRIPT = """
import subprocess, sys, time
# a worker in a session of its own, as torchrun starts them
child = subprocess.Popen([sys.executable, "-c", "import time\\ndef wait_in_child():\\n    time.sleep(600)\\nwait_in_child()"],
                         start_new_session=True)
print(child.pid, flush=True)
def wait_in_parent():
    time.sleep(600)
wait_in_parent()
"""


def test_a_hung_run_fails_with_the_stacks_of_its_processes_and_leaves_none_behind(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANGING_SCRIPT)
    with pytest.raises(pytest.fail.Exception) as failure:
        run_script([sys.executable, str(script)], cwd=tmp_path, timeout=5)
    message = str(failure.value)
    assert "did not finish in 5 s" in message
    assert "wait_in_parent" in message and "wait_in_child" in message  # both processes' stacks
    child = int(message.split("--- stdout ---\n")[1].split()[0])
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_failed_run_fails_with_its_error(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("raise SystemExit('features.h5: missing file')\n")
    with pytest.raises(AssertionError, match="features.h5: missing file"):
        run_script([sys.executable, str(script)], cwd=tmp_path, timeout=60)
