"""ffprobe / ffmpeg wrappers: what a media file holds, and its audio as 16 kHz mono float32."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import correlate

from rtdiar.errors import RtdiarError

VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".avi", ".mov", ".mkv", ".webm", ".m4v")  # what a folder of recordings holds


@dataclass(frozen=True)
class MediaInfo:
    """The streams of a media file that rtdiar cares about."""

    path: Path
    has_video: bool
    has_audio: bool
    fps: float | None  # average frame rate of the video stream
    width: int | None
    height: int | None
    duration_s: float | None
    video_start_s: float  # stream start times: audio and video are aligned on these
    audio_start_s: float


def require_tool(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise RtdiarError(f"'{tool}' is not installed: install Debian's ffmpeg package (apt-get install ffmpeg)")
    return exe


def _rate(text: str | None) -> float | None:
    if not text or text in ("0/0", "0"):
        return None
    num, _, den = text.partition("/")
    value = float(num) / float(den or 1)
    return value if value > 0 else None


def _float(text: str | None, default: float | None = None) -> float | None:
    try:
        return float(text) if text not in (None, "N/A") else default
    except ValueError:
        return default


def check_readable(path: str | Path) -> Path:
    """A clear error for a path that is missing, a folder, or unreadable."""
    path = Path(path)
    if not path.exists():
        raise RtdiarError(f"file not found: {path}")
    if not path.is_file():
        raise RtdiarError(f"not a file: {path}")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise RtdiarError(f"cannot read {path}: {exc.strerror}") from None
    return path


def probe(path: str | Path) -> MediaInfo:
    """Streams, frame rate, size and start times of a media file, via ffprobe."""
    path = check_readable(path)
    cmd = [require_tool("ffprobe"), "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["unknown format"])[-1]
        raise RtdiarError(f"cannot read media file {path}: {reason}")
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    duration = _float(data.get("format", {}).get("duration"))
    return MediaInfo(
        path=path,
        has_video=video is not None,
        has_audio=audio is not None,
        fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) if video else None,
        width=int(video["width"]) if video and "width" in video else None,
        height=int(video["height"]) if video and "height" in video else None,
        duration_s=duration,
        video_start_s=_float(video.get("start_time"), 0.0) if video else 0.0,
        audio_start_s=_float(audio.get("start_time"), 0.0) if audio else 0.0,
    )


def decode_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream as mono float32 at `sample_rate` (ffmpeg resamples and downmixes)."""
    path = check_readable(path)
    cmd = [require_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
           "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        reason = (proc.stderr.decode(errors="replace").strip().splitlines() or ["decoding failed"])[-1]
        raise RtdiarError(f"cannot decode audio of {path}: {reason}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


MAX_CODEC_DELAY_S = 0.25  # longer than any encoder's priming (MP3 and AAC about 0.07 s at 16 kHz, Opus less)


def lossy_round_trip(samples: np.ndarray, options: str, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 `samples` encoded with ffmpeg output `options` (e.g. "-c:a libmp3lame -b:a 24k")
    and decoded back at `sample_rate`: the same length, and the sound where it was, because an
    encoder's delay (its priming samples) is found by cross-correlation and removed. What a phone,
    a web video or a call does to the sound, for training on it."""
    encode = [require_tool("ffmpeg"), "-nostdin", "-v", "error", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
              "-i", "-", *options.split(), "-f", "nut", "-"]
    decode = [require_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", "-", "-ac", "1", "-ar", str(sample_rate),
              "-f", "f32le", "-"]
    coded = subprocess.run(encode, input=np.asarray(samples, np.float32).tobytes(), capture_output=True)
    decoded = subprocess.run(decode, input=coded.stdout, capture_output=True) if coded.returncode == 0 else coded
    if decoded.returncode != 0 or not decoded.stdout:
        reason = (decoded.stderr.decode(errors="replace").strip().splitlines() or ["no audio came out"])[-1]
        raise RtdiarError(f"cannot code audio with ffmpeg options '{options}': {reason}")
    out = np.frombuffer(decoded.stdout, dtype=np.float32)
    delay = _codec_delay(samples, out, int(MAX_CODEC_DELAY_S * sample_rate))
    out = out[delay:delay + len(samples)]
    return np.pad(out, (0, len(samples) - len(out)))


def _codec_delay(original: np.ndarray, coded: np.ndarray, max_delay: int) -> int:
    """How many samples later `coded` starts than `original` (0 to max_delay), by cross-correlation."""
    span = min(len(original), len(coded) - max_delay)
    if span <= 0 or not np.any(original[:span]):
        return 0
    return int(np.argmax(correlate(coded[:span + max_delay], original[:span], mode="valid", method="fft")))
