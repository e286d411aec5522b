"""Sinks that turn the stream of `FrameResult`s into files: JSON lines, RTTM, videos, a plot.

Every sink has `write(result)` and `close()`; `close()` finalises the file and is idempotent, so
the CLI can call it from a `finally` after Ctrl-C or an error and keep what was processed.
JSON lines are flushed line by line. The RTTM and the plot are written on close. Videos are
encoded while the run goes (nothing is held in memory), into a hidden temp file beside the
target that is renamed on success, so a failed run never leaves a half file under the user's name.

Audio timing: `audio_offset_s` is the position in the audio stream (seconds after its first
sample) that plays at result time t = 0 (`FileSource.audio_offset_s`); positive skips the start
of the audio, negative delays it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from rtdiar.config import Config, TrackerConfig
from rtdiar.drawing import annotate, track_colour_rgb
from rtdiar.errors import RtdiarError
from rtdiar.media import require_tool, probe
from rtdiar.tracking import expand_box
from rtdiar.types import FrameResult

FACE_CROP_PX = 224


def check_output_path(path: str | Path, overwrite: bool, inputs: list[Path]) -> Path:
    """Refuse an output that would destroy something: an existing file, an input, or a missing folder."""
    path = Path(path).expanduser()
    if any(path.resolve() == Path(source).expanduser().resolve() for source in inputs):
        raise RtdiarError(f"output {path} is one of the inputs; choose another name")
    if path.exists() and not overwrite:
        raise RtdiarError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise RtdiarError(f"folder {path.parent} does not exist (for output {path})")
    return path


def speaker_turns(timeline: list[tuple[float, int | None]]) -> list[tuple[int, float, float]]:
    """`(speaker, start_s, end_s)` per run of consecutive frames with the same speaker.

    `timeline` is `(t, speaker)` per frame in order. A turn ends at the next frame's time; the last
    frame counts for one frame interval (the previous one), so a turn's frames fill its duration.
    """
    turns: list[tuple[int, float, float]] = []
    for i, (t, speaker) in enumerate(timeline):
        if speaker is None or (i > 0 and timeline[i - 1][1] == speaker):
            continue
        end = i
        while end + 1 < len(timeline) and timeline[end + 1][1] == speaker:
            end += 1
        if end + 1 < len(timeline):
            stop_s = timeline[end + 1][0]
        else:
            stop_s = timeline[end][0] + (timeline[end][0] - timeline[end - 1][0] if end > 0 else 0.0)
        turns.append((speaker, t, stop_s))
    return turns


class JsonlSink:
    """One JSON object per frame (`FrameResult.to_json`), flushed as it goes."""

    def __init__(self, path: str | Path) -> None:
        self._file = Path(path).open("w", encoding="utf-8")

    def write(self, result: FrameResult) -> None:
        self._file.write(json.dumps(result.to_json()) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RttmSink:
    """Standard RTTM (one SPEAKER line per speaking turn, speakers `face<id>`), written on close."""

    def __init__(self, path: str | Path, file_id: str) -> None:
        self.path = Path(path)
        self.file_id = "_".join(str(file_id).split()) or "rtdiar"  # RTTM fields are space-separated
        self._timeline: list[tuple[float, int | None]] = []
        self._closed = False

    def write(self, result: FrameResult) -> None:
        self._timeline.append((result.t, result.speaker))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        from pyannote.core import Annotation, Segment

        annotation = Annotation(uri=self.file_id)
        for index, (speaker, start_s, end_s) in enumerate(speaker_turns(self._timeline)):
            annotation[Segment(start_s, end_s), index] = f"face{speaker}"
        with self.path.open("w", encoding="utf-8") as handle:
            annotation.write_rttm(handle)


class _AudioInput:
    """An audio file to mux, with the ffmpeg options that line it up with a video starting at `t0_s`."""

    def __init__(self, path: str | Path, audio_offset_s: float) -> None:
        info = probe(path)
        if not info.has_audio:
            raise RtdiarError(f"{path} has no audio stream to put in the video")
        self.path = info.path
        # ffmpeg times an input from its earliest stream; the audio stream may start later than that
        file_start_s = min(info.audio_start_s, info.video_start_s) if info.has_video else info.audio_start_s
        self._lead_s = file_start_s - info.audio_start_s - audio_offset_s

    def ffmpeg_args(self, t0_s: float) -> tuple[list[str], str]:
        """(input options ending in `-i path`, audio filter) so the audio at result time t0_s plays at 0."""
        shift_s = self._lead_s - t0_s
        seek = ["-ss", f"{-shift_s:.6f}"] if shift_s < 0 else []
        # adelay rather than -itsoffset: the stream then starts at 0 with silence, which every player handles
        delay = f"adelay=delays={shift_s * 1000:.3f}:all=1," if shift_s > 0 else ""
        # apad + the muxer's -t: the video decides the length, a short audio track is padded with silence
        return [*seek, "-i", str(self.path)], f"{delay}apad"


class _VideoEncoder:
    """One ffmpeg process encoding BGR frames piped at `fps` into `path`; the audio is added on finish.

    Frames are placed on the output timeline by their time, the first one at 0: a frame dropped
    upstream is filled by repeating the previous one, so the video stays in sync with its audio.
    """

    def __init__(self, path: Path, fps: float, audio: _AudioInput | None) -> None:
        self.path = path
        self.fps = float(fps)
        self.audio = audio
        self.frames = 0
        self._t0_s = 0.0
        self._last: bytes | None = None
        self._size: tuple[int, int] | None = None  # width, height; set by the first frame
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._temp: Path | None = None

    def add(self, t: float, image: np.ndarray) -> None:
        if self._size is None:
            self._start(t, image.shape)
        if image.ndim != 3 or image.shape[1::-1] != self._size:
            raise ValueError(f"frame of shape {image.shape} in a {self._size} BGR video")
        frame = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        slot = round((t - self._t0_s) * self.fps)
        if slot < self.frames:  # the source runs faster than `fps`: this frame's slot is taken
            return
        self._pipe([self._last or frame] * (slot - self.frames) + [frame])
        self._last = frame

    def finish(self) -> None:
        """Wait for ffmpeg and move the file into place; RtdiarError (and no file) if it failed."""
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()  # sends the frames still buffered
        except OSError:  # ffmpeg died before taking them: report its reason
            self._fail()
        if self._proc.wait() != 0:
            self._fail()
        self._release()
        if self.audio is not None:
            self._mux_audio()
        os.replace(self._temp, self.path)

    def _start(self, t0_s: float, shape: tuple[int, ...]) -> None:
        self._t0_s = t0_s
        self._size = (shape[1], shape[0])
        cmd = self._command()
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial{self.path.suffix}",
                                    dir=self.path.parent)
        os.close(fd)
        self._temp = Path(name)
        self._stderr = tempfile.TemporaryFile()
        try:
            # own session: Ctrl-C reaches only rtdiar, whose close() then lets ffmpeg finish the file
            # buffered stdin: its write sends the whole frame even when a signal cuts the pipe write short
            self._proc = subprocess.Popen([*cmd, str(self._temp)], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True)
        except OSError as exc:
            self._temp.unlink(missing_ok=True)
            self._release()
            raise RtdiarError(f"cannot start ffmpeg: {exc}") from None

    def _command(self) -> list[str]:
        """The ffmpeg command line, without the output file."""
        width, height = self._size
        cmd = [require_tool("ffmpeg"), "-nostdin", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
               "-s", f"{width}x{height}", "-framerate", repr(self.fps), "-i", "pipe:0"]
        # yuv420p needs an even width and height: pad by one pixel where odd
        return [*cmd, "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
                "-pix_fmt", "yuv420p"]

    def _mux_audio(self) -> None:
        """Second pass: copy the video and add the audio lined up with it.

        The audio file is read only now, when it is complete: a camera's recording grows during the run.
        """
        audio_input, audio_filter = self.audio.ffmpeg_args(self._t0_s)
        muxed = self._temp.with_suffix(f".mux{self.path.suffix}")
        cmd = [require_tool("ffmpeg"), "-nostdin", "-y", "-v", "error", "-i", str(self._temp), *audio_input,
               "-map", "0:v", "-map", "1:a:0?", "-c:v", "copy", "-c:a", "aac", "-af", audio_filter,
               "-t", f"{self.frames / self.fps:.6f}", str(muxed)]  # the video's length: -shortest can cut its last frame
        proc = subprocess.run(cmd, capture_output=True, start_new_session=True)
        if proc.returncode != 0:
            self._temp.unlink(missing_ok=True)
            muxed.unlink(missing_ok=True)
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RtdiarError(f"ffmpeg could not add the audio to {self.path}: {lines[-1] if lines else 'unknown error'}")
        os.replace(muxed, self._temp)

    def _pipe(self, frames: list[bytes]) -> None:
        if self._proc is None:  # ffmpeg already failed, and that was reported
            return
        try:
            for frame in frames:
                self._proc.stdin.write(frame)
        except OSError:  # ffmpeg died (bad input, disk full): report its reason
            self._fail()
        self.frames += len(frames)

    def _fail(self) -> None:
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        self._temp.unlink(missing_ok=True)
        self._release()
        raise RtdiarError(f"ffmpeg could not write {self.path}: {lines[-1] if lines else 'unknown error'}")

    def _release(self) -> None:
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


class AnnotatedVideoSink:
    """The source frames drawn with `annotate`, encoded (H.264 + AAC) with the source's audio.

    `fps` is the output frame rate; frames are placed by their time `t`, the first one at 0.
    """

    def __init__(self, path: str | Path, fps: float, audio_path: str | Path | None,
                 audio_offset_s: float = 0.0) -> None:
        audio = _AudioInput(audio_path, audio_offset_s) if audio_path is not None else None
        self._encoder = _VideoEncoder(Path(path), fps, audio)

    def write(self, result: FrameResult) -> None:
        if result.image is None:
            raise ValueError("AnnotatedVideoSink needs FrameResult.image")
        self._encoder.add(result.t, annotate(result.image, result))

    def close(self) -> None:
        self._encoder.finish()


class FaceCropSink:
    """`folder/face<id>.mp4` per track: its expanded-box crops (224x224) with the audio of its time span.

    Each track gets its own ffmpeg process, started at its first frame (its audio is cut from
    there) and finished once the tracker must have ended it (absent for more than `max_misses`
    results; ids are never reused), so only live tracks hold a process and no video is buffered
    in memory. Frames where the track was missed repeat its last crop, keeping the audio in sync.
    """

    def __init__(self, folder: str | Path, fps: float, tracker_cfg: TrackerConfig,
                 audio_path: str | Path | None, audio_offset_s: float = 0.0) -> None:
        self.folder = Path(folder)
        self.fps = fps
        self.tracker_cfg = tracker_cfg
        self._audio = _AudioInput(audio_path, audio_offset_s) if audio_path is not None else None
        try:
            self.folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise RtdiarError(f"cannot create folder {self.folder}: {exc.strerror}") from None
        self._live: dict[int, _VideoEncoder] = {}
        self._last_seen: dict[int, int] = {}  # track id -> index of the last result it was in
        self._results = 0

    def write(self, result: FrameResult) -> None:
        if result.image is None:
            raise ValueError("FaceCropSink needs FrameResult.image")
        for face in result.faces:
            if face.id not in self._live:
                self._live[face.id] = _VideoEncoder(self.folder / f"face{face.id}.mp4", self.fps, self._audio)
            self._live[face.id].add(result.t, self._crop(result.image, face.box))
            self._last_seen[face.id] = self._results
        self._results += 1
        ended = [i for i, seen in self._last_seen.items() if self._results - 1 - seen > self.tracker_cfg.max_misses]
        for track_id in ended:
            del self._last_seen[track_id]
            self._live.pop(track_id).finish()

    def close(self) -> None:
        """Finish every track's video; the first failure is raised after all were tried."""
        errors = []
        while self._live:
            try:
                self._live.popitem()[1].finish()
            except RtdiarError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _crop(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        x1, y1, x2, y2 = expand_box(np.asarray(box, dtype=float), self.tracker_cfg, image.shape)
        # whole pixels, at least one, so a box squashed against an edge still gives a crop
        left, top = min(math.floor(x1), image.shape[1] - 1), min(math.floor(y1), image.shape[0] - 1)
        face = image[top:max(math.ceil(y2), top + 1), left:max(math.ceil(x2), left + 1)]
        return cv2.resize(face, (FACE_CROP_PX, FACE_CROP_PX), interpolation=cv2.INTER_AREA)


class PlotSink:
    """A PNG of every face's smoothed score over time, its speaking turns and the threshold."""

    def __init__(self, path: str | Path, threshold: float) -> None:
        self.path = Path(path)
        self.threshold = threshold
        self._timeline: list[tuple[float, int | None]] = []
        self._scores: dict[int, dict[int, float]] = {}  # track id -> {frame position: score}
        self._closed = False

    def write(self, result: FrameResult) -> None:
        position = len(self._timeline)
        self._timeline.append((result.t, result.speaker))
        for face in result.faces:
            series = self._scores.setdefault(face.id, {})
            if face.score is not None:
                series[position] = face.score

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

        fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
        ax = fig.subplots()
        times = np.array([t for t, _ in self._timeline], dtype=float)
        for track_id, series in sorted(self._scores.items()):
            colour = np.array(track_colour_rgb(track_id)) / 255
            scores = np.full(len(times), np.nan)  # NaN leaves a gap where the face was absent or unscored
            scores[list(series)] = list(series.values())
            ax.plot(times, scores, color=colour, linewidth=1.2, label=f"face{track_id}")
            speaking = np.array([speaker == track_id for _, speaker in self._timeline])
            ax.plot(times, np.where(speaking, scores, np.nan), color=colour, linewidth=4)
        for speaker, start_s, end_s in speaker_turns(self._timeline):
            ax.axvspan(start_s, end_s, color=np.array(track_colour_rgb(speaker)) / 255, alpha=0.15, linewidth=0)
        ax.axhline(self.threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("smoothed score")
        ax.set_title(f"rtdiar: score per face, speaking turns thick and shaded ({self.path.stem})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside, never over a curve
        fmt = self.path.suffix.lstrip(".").lower()
        fig.savefig(self.path, format=fmt if fmt in fig.canvas.get_supported_filetypes() else "png")


def open_sinks(paths: dict[str, Path], config: Config, source, name: str | None = None) -> list:
    """One sink per requested output (`jsonl`, `rttm`, `annotated`, `plot`, `faces`) of a run of
    `source`; `name` is the RTTM's file id (default: the source's)."""
    makers = {
        "jsonl": JsonlSink,
        "rttm": lambda p: RttmSink(p, name or source.name),
        "annotated": lambda p: AnnotatedVideoSink(p, source.fps, source.audio_path, source.audio_offset_s),
        "plot": lambda p: PlotSink(p, config.decision.threshold),
        "faces": lambda p: FaceCropSink(p, source.fps, config.tracker, source.audio_path, source.audio_offset_s),
    }
    return [makers[name](path) for name, path in paths.items()]
