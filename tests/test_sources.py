"""Camera + microphone mode with stand-in devices (no webcam or microphone on CI machines).

The stand-ins replay a real clip the way the devices deliver data: the camera blocks until the next
frame is due, the microphone calls back with fixed-size blocks from its own thread.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import sounddevice

from rtdiar import sources
from rtdiar.cli import main
from rtdiar.media import decode_audio, probe

REAL_CAPTURE = cv2.VideoCapture  # the fixture below replaces cv2.VideoCapture itself


class FakeWebcam:
    """cv2.VideoCapture stand-in: the clip's frames at 25 fps, then read() fails (the camera is unplugged)."""

    def __init__(self, clip, index) -> None:
        self._capture = REAL_CAPTURE(str(clip))
        self._next = time.monotonic()

    def isOpened(self) -> bool:
        return True

    def set(self, prop, value) -> bool:
        return True

    def get(self, prop) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        time.sleep(max(0.0, self._next - time.monotonic()))
        self._next += 0.04
        return self._capture.read()

    def release(self) -> None:
        self._capture.release()


def fake_microphone(samples: np.ndarray):
    """A sounddevice.InputStream stand-in that plays `samples` through its callback in real time."""

    class Stream:
        def __init__(self, device, channels, samplerate, blocksize, dtype, callback) -> None:
            self.block, self.rate, self.callback = blocksize, samplerate, callback
            self._stop = threading.Event()

        def _play(self) -> None:
            """The samples, then silence until stopped, as a microphone keeps going (none: a dead device)."""
            start, offset = time.monotonic(), 0
            while len(samples) and not self._stop.wait(max(0.0, start + offset / self.rate - time.monotonic())):
                block = np.zeros((self.block, 1), np.float32)
                chunk = samples[offset:offset + self.block]
                block[:len(chunk), 0] = chunk
                self.callback(block, self.block, None, SimpleNamespace(input_overflow=False))
                offset += self.block

        def __enter__(self):
            self._thread = threading.Thread(target=self._play, daemon=True)
            self._thread.start()
            return self

        def __exit__(self, *exc) -> None:
            self._stop.set()
            self._thread.join()

    return Stream


@pytest.fixture
def webcam(monkeypatch, dev_clip):
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: FakeWebcam(dev_clip, index))


@pytest.fixture
def short_silence_timeout(tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text("audio:\n  mic_silence_timeout_s: 1.0\n  wait_timeout_s: 2.0\n")
    return path


def test_camera_and_microphone_run_until_the_camera_is_unplugged(monkeypatch, webcam, dev_clip, tmp_path):
    monkeypatch.setattr(sounddevice, "InputStream", fake_microphone(decode_audio(dev_clip)))
    jsonl, rttm, video = tmp_path / "live.jsonl", tmp_path / "live.rttm", tmp_path / "live.mp4"
    # the training-free scorer keeps up on a busy machine: this is about the camera and microphone, not the model
    code = main(["--camera", "0", "--no-window", "--arch", "baseline", "--threshold", "-1",
                 "--jsonl", str(jsonl), "--rttm", str(rttm), "--annotated", str(video)])
    assert code == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) > 50  # most of the clip's 114 frames (a slow machine may drop a few)
    assert sum(bool(line["faces"]) for line in lines) > 0.8 * len(lines)
    assert any(line["speaker"] == 1 for line in lines)  # speech heard from the microphone
    assert rttm.read_text().startswith("SPEAKER camera0 1 ")
    recorded = probe(video)  # the annotated video carries what the microphone heard
    assert recorded.has_video and recorded.has_audio
    heard = decode_audio(video)
    assert np.abs(heard).max() > 0.05
    # sound all along the picture (which starts with the first frame processed, later on a busy machine)
    assert len(heard) / 16000 == pytest.approx(recorded.duration_s, abs=0.2) and recorded.duration_s > 2.0


def test_a_silent_microphone_is_a_clear_error(monkeypatch, capsys, webcam, random_weights, short_silence_timeout):
    monkeypatch.setattr(sounddevice, "InputStream", fake_microphone(np.zeros(16000 * 4, np.float32)))
    assert main(["--camera", "0", "--no-window", "--weights", str(random_weights),
                 "--config", str(short_silence_timeout)]) == 2
    started, err = _run_then_error(capsys)
    assert err.startswith("rtdiar: error: microphone") and "silence" in err


def _run_then_error(capsys) -> tuple[str, str]:
    """A failure once the run has started: the start-up line saying which judgement runs, then one error line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("rtdiar: judging with"), lines
    return lines[0], lines[1]


def test_a_microphone_that_delivers_nothing_is_a_clear_error(monkeypatch, capsys, webcam, random_weights,
                                                             short_silence_timeout):
    monkeypatch.setattr(sounddevice, "InputStream", fake_microphone(np.zeros(0, np.float32)))
    assert main(["--camera", "0", "--no-window", "--weights", str(random_weights),
                 "--config", str(short_silence_timeout)]) == 2
    started, err = _run_then_error(capsys)
    assert "microphone" in err and "no audio" in err
