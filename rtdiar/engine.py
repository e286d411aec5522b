"""The threaded pipeline: source threads -> bounded queues -> processing -> FrameResults.

The engine never touches tensors (the scorer does) and never draws (the sinks and window do).
`Diarizer(config, scorer).run(source)` yields one FrameResult per processed frame, lazily.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rtdiar.audio import AudioRing, MelBuffer, MfccBuffer, VoiceActivity
from rtdiar.cohort import OffSyncCohort
from rtdiar.config import Config
from rtdiar.decision import CausalSmoother, SpeakerDecision
from rtdiar.errors import RtdiarError
from rtdiar.lips import LipLandmarker
from rtdiar.scorers.base import Scorer, TrackWindow
from rtdiar.sources import VideoFrame
from rtdiar.timing import StageTimes
from rtdiar.tracking import FaceDetector, IoUTracker, ShotCuts
from rtdiar.types import FaceResult, FrameResult
from rtdiar.windows import MFCC_PER_FRAME, CropHistory, audio_end_sample, mel_start_index, mfcc_end_sample, window_times

_END = object()  # sentinel: the video stream ended
DETECTED_AHEAD = 2  # frames detected and waiting for processing


@dataclass
class _Detected:
    """A frame with its face detections, from the detection thread to processing."""

    frame: VideoFrame
    boxes: np.ndarray
    scores: np.ndarray
    cut: bool  # the frame opens a new shot


@dataclass
class _Failure:
    """An exception raised in a source thread, carried to the processing thread."""

    error: BaseException


class _Rate:
    """Events per second, smoothed, for the status line."""

    def __init__(self) -> None:
        self.per_s = 0.0
        self._last: float | None = None

    def tick(self, now: float) -> None:
        """Count one event at `now` (time.monotonic()): an exponential average of the instant rate."""
        if self._last is not None and now > self._last:
            instant = 1.0 / (now - self._last)
            self.per_s = instant if self.per_s == 0.0 else 0.9 * self.per_s + 0.1 * instant
        self._last = now


class Diarizer:
    """Streams FrameResults from a source: detect, track, window, score, smooth, decide."""

    def __init__(self, config: Config, scorer: Scorer) -> None:
        self.config = config
        self.scorer = scorer
        self._stop = threading.Event()
        self._capture_rate = _Rate()
        self._processing_rate = _Rate()
        self._latency_ms = 0.0
        self._dropped = 0
        self._audio_consumed = 0
        self._source = None
        self.times = StageTimes()  # per-stage seconds, for the speed benchmark

    def stop(self) -> None:
        """Ask every thread to finish; `run` then ends after the frame in hand."""
        self._stop.set()

    def stats(self) -> dict:
        """Live figures for the status line (read from another thread; plain floats, no locks needed)."""
        return {
            "capture_fps": self._capture_rate.per_s,
            "processing_fps": self._processing_rate.per_s,
            "latency_ms": self._latency_ms,
            "dropped": self._dropped,
            "mic_overflows": getattr(self._source, "mic_overflows", 0),
        }

    def run(self, source) -> Iterator[FrameResult]:
        """Start the source threads and yield a result per processed frame until the source ends."""
        self._source = source
        sample_rate = self.config.audio.sample_rate
        ring = AudioRing(int(self.config.audio.ring_s * sample_rate), sample_rate)
        frames: queue.Queue = queue.Queue(maxsize=self.config.video.queue_frames)
        # detection runs in a thread of its own, a frame ahead of processing: MediaPipe releases the
        # GIL, so detecting frame k+1 overlaps with scoring frame k on a second core
        detected: queue.Queue = queue.Queue(maxsize=DETECTED_AHEAD)
        source.start_clock(time.monotonic())
        threads = [
            threading.Thread(target=self._video_loop, args=(source, frames), name="video", daemon=True),
            # audio failures skip the frame queue, whose live mode drops its oldest items
            threading.Thread(target=self._audio_loop, args=(source, ring, detected), name="audio", daemon=True),
            threading.Thread(target=self._detect_loop, args=(frames, detected), name="detect", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            yield from self._process(source, detected, ring)
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=5.0)

    def _video_loop(self, source, frames: queue.Queue) -> None:
        try:
            for frame in self._timed_frames(source):
                self._capture_rate.tick(frame.capture_time)
                self._enqueue(frames, frame, drop_stale=source.live)
            self._enqueue(frames, _END, drop_stale=False)
        except BaseException as exc:  # noqa: BLE001 - carried to the processing thread and re-raised there
            self._enqueue(frames, _Failure(exc), drop_stale=False)

    def _timed_frames(self, source) -> Iterator[VideoFrame]:
        """The source's frames; unpaced sources also time each read (paced ones would time their waits)."""
        frames = source.read_frames(self._stop)
        while True:
            start = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                return
            if not source.live:
                self.times.add("decode", time.perf_counter() - start)
            yield frame

    def _detect_loop(self, frames: queue.Queue, detected: queue.Queue) -> None:
        """Faces of every frame, in order; control items (end, failures) pass through. The detector
        runs every `detector.every_frames` frames and at each shot cut; other frames keep its last boxes."""
        every = self.config.detector.every_frames
        try:
            cuts = ShotCuts(self.config.tracker.cut_threshold)
            found: tuple[int, np.ndarray, np.ndarray] | None = None  # the last detection: frame index, boxes, scores
            with FaceDetector(self.config.detector) as detector:
                while (item := self._take(frames)) is not None:
                    if isinstance(item, VideoFrame):
                        with self.times.stage("detect"):
                            cut = cuts.is_cut(item.image)
                            if cut or found is None or item.index - found[0] >= every:
                                found = (item.index, *detector.detect(item.image))
                            item = _Detected(item, found[1], found[2], cut)
                    self._enqueue(detected, item, drop_stale=False)
                    if not isinstance(item, _Detected):
                        return
        except BaseException as exc:  # noqa: BLE001 - carried to the processing thread and re-raised there
            self._enqueue(detected, _Failure(exc), drop_stale=False)

    def _audio_loop(self, source, ring: AudioRing, detected: queue.Queue) -> None:
        try:
            source.feed_audio(ring, self._stop, lambda: ring.written - self._audio_consumed)
        except BaseException as exc:  # noqa: BLE001
            ring.close()
            self._enqueue(detected, _Failure(exc), drop_stale=False)

    def _take(self, items: queue.Queue) -> object | None:
        """The next item, waiting for it; None once a stop is asked for (a blocking get would never see it)."""
        while not self._stop.is_set():
            try:
                return items.get(timeout=0.1)
            except queue.Empty:
                pass
        return None

    def _enqueue(self, frames: queue.Queue, item: object, drop_stale: bool) -> None:
        """Live sources drop the stalest frame when processing lags, at once (a camera does not wait
        for its reader); files and control items wait for room."""
        while not self._stop.is_set():
            try:
                if drop_stale:
                    frames.put_nowait(item)
                else:
                    frames.put(item, timeout=0.1)
                return
            except queue.Full:
                if drop_stale:
                    try:
                        frames.get_nowait()
                        self._dropped += 1
                    except queue.Empty:
                        pass

    def _process(self, source, detected: queue.Queue, ring: AudioRing) -> Iterator[FrameResult]:
        """The frames processed in order; FaceMesh runs here, on the tracked boxes, for a model that reads lip points."""
        with LipLandmarker() if self.scorer.needs.lips else contextlib.nullcontext() as landmarker:
            yield from self._process_frames(source, detected, ring, landmarker)

    def _process_frames(self, source, detected: queue.Queue, ring: AudioRing,
                        landmarker: LipLandmarker | None) -> Iterator[FrameResult]:
        cfg, needs = self.config, self.scorer.needs
        tracker = IoUTracker(cfg.tracker)
        stream = _AudioFeatures(cfg, needs.audio, ring, self.times)
        cohort = OffSyncCohort(shifts) if (shifts := cfg.decision.cohort()) else None
        held = _HeldFrames(needs.latency_frames / cfg.window.fps, CausalSmoother(cfg.decision.smooth_windows),
                           SpeakerDecision(cfg.decision))
        histories: dict[int, CropHistory] = {}
        while (item := self._take(detected)) is not None:
            if item is _END:
                yield from self._released(held.release(float("inf")))
                return
            if isinstance(item, _Failure):
                raise item.error
            frame: VideoFrame = item.frame
            with self.times.stage("track"):
                tracks = tracker.update(item.boxes, item.scores, item.cut)
                for ended in tracker.ended_ids():
                    histories.pop(ended, None)
                    held.forget(ended, frame.t)
                    self.scorer.forget(ended)
                    if cohort is not None:
                        cohort.forget(ended)
            with self.times.stage("crop"):
                crops = [needs.crop(frame.image, track.box) for track in tracks]
            lips = [None] * len(tracks)
            if landmarker is not None:
                with self.times.stage("lips"):
                    lips = [landmarker.points(frame.image, track.box) for track in tracks]
            for track, crop, points in zip(tracks, crops, lips):
                histories.setdefault(track.id, CropHistory()).add(frame.t, crop, points)
            t_audio = frame.t - self._audio_start(source, ring)
            stream.advance_to(stream.end_sample(t_audio), self._stop)
            self._audio_consumed = stream.consumed
            raw = {}
            if frame.index % cfg.model.stride_frames == 0:
                with self.times.stage("model"):
                    raw = self._score(tracks, histories, frame.t, stream.window(t_audio, needs.audio_frames), cohort)
            with self.times.stage("decision"):
                held.add(frame, [(track.id, tuple(float(v) for v in track.box)) for track in tracks],
                         stream.speech(t_audio), raw)
                released = held.release(frame.t)
            yield from self._released(released)

    def _released(self, results: list[FrameResult]) -> Iterator[FrameResult]:
        """Decided frames out, each timed from its capture to now (a held frame's wait included)."""
        for result in results:
            now = time.monotonic()
            self._latency_ms = result.latency_ms = (now - result.capture_time) * 1000.0
            self._processing_rate.tick(now)
            yield result

    def _score(self, tracks, histories: dict[int, CropHistory], t: float, audio: np.ndarray | None,
               cohort: OffSyncCohort | None) -> dict[int, float]:
        """One scorer call for every track with a full window; each score relative to its off-sync
        pairings when there is a cohort and the scorer gives embeddings (the sound's even with no
        face ready, for later windows to pair with)."""
        if audio is None:
            return {}
        needs, fps = self.scorer.needs, self.config.window.fps
        ready = [window for track in tracks if (window := _track_window(track.id, histories[track.id], t, needs.frames,
                                                                         fps, needs.lips)) is not None]
        if not ready and cohort is None:
            return {}
        step = int(round(t * fps))
        scores = self.scorer.score_frame(step, ready, audio)
        if cohort is None or scores.audio is None:
            return scores.raw
        return cohort.scores(step, scores.audio, scores.faces)

    def _audio_start(self, source, ring: AudioRing) -> float:
        """Timeline time of ring sample 0; a microphone sets it with its first block."""
        deadline = time.monotonic() + self.config.audio.wait_timeout_s
        while source.audio_start_s is None:
            if ring.closed or time.monotonic() > deadline or self._stop.is_set():
                raise RtdiarError("the microphone delivered no audio: check it is connected (--mic)")
            time.sleep(0.005)
        return source.audio_start_s


@dataclass
class _Held:
    """A processed frame waiting for the scores that describe it."""

    frame: VideoFrame
    tracks: list[tuple[int, tuple[float, float, float, float]]]
    speech: bool
    raw: dict[int, float]


class _HeldFrames:
    """Puts each score on the frame it describes, then smooths and decides in frame order.

    A scorer with latency (`ScorerNeeds.latency_frames`: an active-speaker model's embedding waits
    for later frames) returns at time t the scores of the frame at t - latency; that frame is held
    until then, so its decision, its VAD gate and its boxes all belong to the same moment. With no
    latency each frame is decided as soon as it is processed.
    """

    def __init__(self, latency_s: float, smoother: CausalSmoother, decision: SpeakerDecision) -> None:
        self.latency_s = latency_s
        self.smoother = smoother
        self.decision = decision
        self._held: deque[_Held] = deque()
        self._ended: list[tuple[float, int]] = []  # (time it ended, track id): forgotten once no held frame shows it

    def add(self, frame: VideoFrame, tracks: list, speech: bool, raw: dict[int, float]) -> None:
        """A processed frame, and the scores computed with it: those of the held frame nearest t - latency."""
        self._held.append(_Held(frame, tracks, speech, {}))
        if raw:
            target = frame.t - self.latency_s
            min(self._held, key=lambda held: abs(held.frame.t - target)).raw = raw

    def forget(self, track_id: int, t: float) -> None:
        self._ended.append((t, track_id))

    def release(self, t: float) -> list[FrameResult]:
        """The decisions of every held frame at or before `t` - latency, oldest first."""
        out = []
        while self._held and self._held[0].frame.t <= t - self.latency_s + 1e-3:
            out.append(self._decide(self._held.popleft()))
        oldest = self._held[0].frame.t if self._held else float("inf")
        for ended in [e for e in self._ended if e[0] <= oldest]:
            self.smoother.forget(ended[1])
            self._ended.remove(ended)
        return out

    def _decide(self, held: _Held) -> FrameResult:
        frame, raw = held.frame, held.raw
        faces = [FaceResult(tid, box, self.smoother.add(tid, raw[tid]) if tid in raw else self.smoother.value(tid),
                            raw_score=raw.get(tid)) for tid, box in held.tracks]
        speaker = self.decision.update(frame.t, {face.id: face.score for face in faces}, held.speech)
        for face in faces:
            face.speaking = face.id == speaker
        return FrameResult(frame.index, frame.t, faces, speaker, None, held.speech, frame.image, frame.capture_time)


def _track_window(track_id: int, history: CropHistory, t: float, frames: int, fps: float,
                  lips: bool) -> TrackWindow | None:
    """A track's last `frames` crops at `fps` ending at `t` (with their lip points when asked), or
    None while it has no such window."""
    if not lips:
        crops = history.window(t, frames, fps)
        return None if crops is None else TrackWindow(track_id, crops)
    crops, points = history.window_with_lips(t, frames, fps)
    return None if crops is None or points is None else TrackWindow(track_id, crops, points)


class _AudioFeatures:
    """Pulls new samples from the ring into the scorer's sound features and the VAD, in order."""

    def __init__(self, cfg: Config, kind: str, ring: AudioRing, times: StageTimes) -> None:
        self.cfg = cfg
        self.kind = kind
        self.ring = ring
        self.times = times
        self.consumed = 0
        sample_rate = cfg.audio.sample_rate
        if kind == "mel":
            self.features = MelBuffer(int(cfg.audio.ring_s * 80), sample_rate)
        elif kind == "mfcc":
            self.features = MfccBuffer(int(cfg.audio.ring_s * 100), sample_rate)
        else:
            raise ValueError(f"unknown sound features {kind!r} (mel or mfcc)")
        self.vad = VoiceActivity(sample_rate)
        self._finished = False

    def advance_to(self, end_sample: int, stop: threading.Event) -> None:
        """Consume audio until `end_sample` is in, waiting for it if the source has not delivered it yet."""
        while self.consumed < end_sample and not self._finished:
            if not self.ring.wait_for(min(end_sample, self.consumed + 1), self.cfg.audio.wait_timeout_s):
                if stop.is_set():
                    return
                raise RtdiarError("the audio stopped arriving: the microphone or file feeder stalled")
            available = self.ring.written
            if available > self.consumed:
                block = self.ring.read(self.consumed, available)
                with self.times.stage(self.kind):
                    self.features.push(block)
                with self.times.stage("vad"):
                    self.vad.push(block)
                self.consumed = available
            elif self.ring.closed:
                self.features.finish()
                self._finished = True

    def end_sample(self, t_audio: float) -> int:
        """The sample (exclusive) the features of the frame at `t_audio` need."""
        if self.kind == "mel":
            return audio_end_sample(t_audio, self.cfg.window, self.cfg.audio.sample_rate)
        return mfcc_end_sample(t_audio, self.cfg.window.fps)

    def window(self, t_audio: float, frames: int) -> np.ndarray | None:
        """The sound features of the `frames` video frames that end at `t_audio`: the 16 mel frames
        (0.2 s) of the SyncNet window, or MFCC rows, 4 a frame (from the stream's start while it is
        younger than the window)."""
        wcfg = self.cfg.window
        if self.kind == "mel":
            start = mel_start_index(float(window_times(t_audio, wcfg.frames, wcfg.fps)[0]))
            return self.features.window(start, wcfg.mel_frames) if start >= 0 else None
        stop = (int(round(t_audio * wcfg.fps)) + 1) * MFCC_PER_FRAME
        start = max(0, stop - frames * MFCC_PER_FRAME)
        return self.features.window(start, stop - start) if stop > start else None

    def speech(self, t_audio: float) -> bool:
        wcfg = self.cfg.window
        start_s = float(window_times(t_audio, wcfg.frames, wcfg.fps)[0])
        prob = self.vad.speech_prob(start_s, start_s + wcfg.mel_frames / 80.0)
        return prob is not None and prob >= self.cfg.decision.vad_threshold
