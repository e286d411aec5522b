"""Where frames and audio come from: a camera with a microphone, or a recorded file.

Every source has one interface, so the engine runs the same code for all of them:
`read_frames(stop)` yields timestamped frames (paced or not) and `feed_audio(ring, stop, backlog)`
writes the audio, in the frames' timeline, into the engine's ring buffer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile

from rtdiar.audio import AudioRing
from rtdiar.config import AudioConfig, VideoConfig
from rtdiar.errors import RtdiarError
from rtdiar.media import MediaInfo, decode_audio, probe

PACES = ("realtime", "fast")


@dataclass
class VideoFrame:
    """One source frame with its presentation time and when it was captured (or replayed)."""

    index: int
    t: float  # seconds on the source timeline; audio sample 0 of the ring is at `audio_start_s`
    image: np.ndarray
    capture_time: float  # time.monotonic()


class FileSource:
    """A recording, replayed as a camera and microphone would deliver it, or as fast as possible.

    Audio and video are aligned on their streams' start times: ring sample 0 is the audio at the
    first video frame's time (t = 0), so a file whose audio starts late or early stays in sync.
    """

    def __init__(self, video: str | Path, audio: str | Path | None, pace: str,
                 video_cfg: VideoConfig, audio_cfg: AudioConfig) -> None:
        if pace not in PACES:
            raise RtdiarError(f"unknown pace '{pace}': use one of {', '.join(PACES)}")
        self.pace = pace
        self.live = pace == "realtime"  # replayed like a camera: drops frames when processing lags
        self.video_info = probe(video)
        if not self.video_info.has_video:
            raise RtdiarError(f"{video} has no video stream")
        self.audio_info = probe(audio) if audio is not None else self.video_info
        if not self.audio_info.has_audio:
            hint = "" if audio is not None else "; pass its sound with --audio FILE"
            raise RtdiarError(f"{self.audio_info.path} has no audio stream{hint}")
        self.name = Path(video).stem
        self.fps = self.video_info.fps or video_cfg.fallback_fps
        self.sample_rate = audio_cfg.sample_rate
        self.block_samples = int(round(audio_cfg.block_s * self.sample_rate))
        self.audio_start_s = 0.0
        self._t0 = time.monotonic()

    @property
    def audio_path(self) -> Path:
        return self.audio_info.path

    @property
    def audio_offset_s(self) -> float:
        """Seconds into the audio file's stream that line up with the first video frame."""
        return _lead_s(self.video_info, self.audio_info)

    def start_clock(self, t0: float) -> None:
        """Both replay threads pace against the same wall-clock start."""
        self._t0 = t0

    def read_frames(self, stop: threading.Event) -> Iterator[VideoFrame]:
        capture = cv2.VideoCapture(str(self.video_info.path))
        if not capture.isOpened():
            raise RtdiarError(f"cannot open video {self.video_info.path}")
        try:
            index = 0
            while not stop.is_set():
                ok, image = capture.read()
                if not ok:
                    return
                t = _frame_time(capture, index, self.fps)
                if self.pace == "realtime":
                    stop.wait(max(0.0, self._t0 + t - time.monotonic()))
                yield VideoFrame(index, t, image, time.monotonic())
                index += 1
        finally:
            capture.release()

    def aligned_audio(self) -> np.ndarray:
        """The whole sound track as 16 kHz mono float32, sample 0 at the first video frame (t = 0)."""
        return _align(decode_audio(self.audio_info.path, self.sample_rate), self.audio_offset_s, self.sample_rate)

    def feed_audio(self, ring: AudioRing, stop: threading.Event, backlog: Callable[[], int]) -> None:
        """Write the audio in blocks: at wall-clock pace, or as fast as the consumer keeps up."""
        samples = self.aligned_audio()
        max_backlog = ring.capacity_samples // 2  # fast feeders keep at most half the ring unread
        for start in range(0, len(samples), self.block_samples):
            block = samples[start:start + self.block_samples]
            if self.pace == "realtime":
                due = self._t0 + (start + len(block)) / self.sample_rate
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
            else:
                while backlog() > max_backlog and not stop.wait(0.002):
                    pass
            if stop.is_set():
                break
            ring.write(block)
        ring.close()

    def close(self) -> None:
        """Nothing to release: each reader opens and closes its own handle."""


def _lead_s(video: MediaInfo, audio: MediaInfo) -> float:
    """How far the audio stream's start lies before the first video frame (negative: after)."""
    video_start = video.video_start_s if audio.path == video.path else 0.0
    return video_start - audio.audio_start_s


def _align(samples: np.ndarray, lead_s: float, sample_rate: int) -> np.ndarray:
    """Drop audio that precedes the first frame, or pad silence for audio that starts late."""
    shift = int(round(lead_s * sample_rate))
    if shift >= 0:
        return samples[shift:]
    return np.concatenate([np.zeros(-shift, dtype=np.float32), samples])


def _frame_time(capture: cv2.VideoCapture, index: int, fps: float) -> float:
    """The frame's presentation time from the container (handles variable frame rate)."""
    msec = capture.get(cv2.CAP_PROP_POS_MSEC)
    return msec / 1000.0 if msec > 0 or index == 0 else index / fps


class CameraSource:
    """A webcam (OpenCV) and a microphone (sounddevice) on one monotonic clock."""

    live = True
    audio_offset_s = 0.0

    def __init__(self, camera: int | str, mic: int | str | None,
                 video_cfg: VideoConfig, audio_cfg: AudioConfig, record_to: Path | None = None) -> None:
        self.name = f"camera{camera}"
        self.mic = mic
        self.sample_rate = audio_cfg.sample_rate
        self.block_samples = int(round(audio_cfg.block_s * self.sample_rate))
        self.silence_timeout_s = audio_cfg.mic_silence_timeout_s
        self.capture = cv2.VideoCapture(int(camera) if str(camera).isdigit() else camera)
        if not self.capture.isOpened():
            raise RtdiarError(f"cannot open camera {camera}: is it connected and not used by another program?")
        self.capture.set(cv2.CAP_PROP_FRAME_WIDTH, video_cfg.camera_width)
        self.capture.set(cv2.CAP_PROP_FRAME_HEIGHT, video_cfg.camera_height)
        reported = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = reported if 1.0 <= reported <= 240.0 else video_cfg.fallback_fps
        self.audio_start_s: float | None = None  # set by the first microphone block
        # what the microphone heard, as a WAV whose sample 0 is at t = 0, for the videos rtdiar writes
        self.audio_path = record_to
        self._recording = soundfile.SoundFile(record_to, "w", self.sample_rate, 1, "FLOAT") if record_to else None
        self._recorded = 0  # ring samples handled by the recording (written or skipped)
        self._lined_up = False  # the silence or skip that puts the recording's sample 0 at t = 0 is done
        self.mic_overflows = 0
        self._t0 = time.monotonic()

    def start_clock(self, t0: float) -> None:
        self._t0 = t0

    def read_frames(self, stop: threading.Event) -> Iterator[VideoFrame]:
        index = 0
        while not stop.is_set():
            ok, image = self.capture.read()
            now = time.monotonic()
            if not ok:
                return  # unplugged: end the run cleanly, outputs are finalised by the engine
            yield VideoFrame(index, now - self._t0, image, now)
            index += 1

    def feed_audio(self, ring: AudioRing, stop: threading.Event, backlog: Callable[[], int]) -> None:
        """Run the microphone until `stop`; fail clearly if it delivers nothing or only zeros."""
        import sounddevice as sd  # needs libportaudio2; only camera mode imports it

        started = time.monotonic()
        loudest = 0.0

        def on_block(block: np.ndarray, frames: int, info: object, status: sd.CallbackFlags) -> None:
            nonlocal loudest
            if self.audio_start_s is None:
                self.audio_start_s = time.monotonic() - frames / self.sample_rate - self._t0
            if status.input_overflow:
                self.mic_overflows += 1
            loudest = max(loudest, float(np.abs(block).max(initial=0.0)))
            ring.write(block[:, 0].astype(np.float32))

        try:
            stream = sd.InputStream(device=_device(self.mic), channels=1, samplerate=self.sample_rate,
                                    blocksize=self.block_samples, dtype="float32", callback=on_block)
        except (sd.PortAudioError, ValueError) as exc:
            raise RtdiarError(f"cannot open microphone {self.mic or '(default)'}: {exc}") from None
        with stream:
            while not stop.wait(0.1):
                self._record(ring)
                waited = time.monotonic() - started
                if waited > self.silence_timeout_s and loudest < 1e-5:
                    raise RtdiarError(
                        f"microphone {self.mic or '(default)'} delivered {'only silence' if ring.written else 'no audio'}"
                        f" for {self.silence_timeout_s:.0f} s: is it muted or the wrong device? (--mic)")
        self._record(ring)
        ring.close()

    def _record(self, ring: AudioRing) -> None:
        """Append the ring's new samples to the recording, lined up so that its sample 0 is at t = 0."""
        if self._recording is None or self.audio_start_s is None:
            return
        if not self._lined_up:
            lead = int(round(self.audio_start_s * self.sample_rate))
            if lead > 0:
                self._recording.write(np.zeros(lead, np.float32))
            self._recorded = max(0, -lead)
            self._lined_up = True
        if ring.written > self._recorded:
            self._recording.write(ring.read(self._recorded, ring.written))
            self._recorded = ring.written

    def close(self) -> None:
        self.capture.release()
        if self._recording is not None:
            self._recording.close()


def _device(mic: int | str | None) -> int | str | None:
    return int(mic) if isinstance(mic, str) and mic.isdigit() else mic
