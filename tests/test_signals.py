"""A stop signal (Ctrl-C, `kill`, `docker stop`, a closing terminal) ends a run with complete outputs
and status 0; a second one ends it at once. The signals are sent from Python: a shell's background
job ignores SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEV_WILD, count_frames

CLIP = DEV_WILD / "w2l_input3.mp4"  # 7.3 s: long enough to be stopped in the middle


def _start(out: Path, window: bool = False) -> subprocess.Popen:
    """A realtime replay with every file output; with the live window (offscreen Qt) when asked."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.Popen([sys.executable, "-m", "rtdiar", "--video", str(CLIP), "--pace", "realtime",
                             *([] if window else ["--no-window"]),
                             "--jsonl", str(out / "run.jsonl"), "--rttm", str(out / "run.rttm"),
                             "--annotated", str(out / "run.mp4")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Until the run has written `count` frames (it is then mid-clip, replayed in real time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the run wrote fewer than {count} frames: {proc.stderr.read()}")


@pytest.mark.parametrize("signum, window", [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGINT, False),
                                            (signal.SIGTERM, True)], ids=["SIGTERM", "SIGHUP", "SIGINT", "SIGTERM-window"])
def test_a_stop_signal_leaves_complete_outputs(tmp_path, signum, window):
    proc = _start(tmp_path, window)
    _wait_for_lines(tmp_path / "run.jsonl", 25, proc)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    frames = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert 25 <= len(frames) < count_frames(CLIP)  # stopped in the middle of the clip
    # the annotated video is finalised: it plays, through the last frame written (frames the realtime pace
    # dropped while the model loaded keep their place in it)
    assert len(frames) <= count_frames(tmp_path / "run.mp4") <= frames[-1]["frame"] + 1
    assert (tmp_path / "run.rttm").exists()
    assert "Traceback" not in proc.stderr.read()


def test_a_second_signal_ends_the_run_at_once():
    """The first signal only asks for a stop; a second, while the stop is under way, exits at once
    with the status a shell gives a process the signal killed."""
    code = ("import os, signal, time\n"
            "from rtdiar.signals import stop_on_signals\n"
            "with stop_on_signals(lambda: print('stopping', flush=True)):\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
            "    print('still finishing', flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)\n"
            "print('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.stdout.split() == ["stopping", "still", "finishing"]
    assert proc.returncode == 128 + signal.SIGTERM
