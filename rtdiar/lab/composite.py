"""Composite "meetings" for the accuracy benchmark: real single-speaker clips side by side, one voice at a time.

Each tile is a real clip, looped where short, whose picture and own sound stay in sync. The
meeting's sound follows seeded turns (one person at a time, with pauses where nobody speaks) while
every face keeps moving, so who speaks when is known by construction. A seed fixes every choice,
and a rendered meeting is cached beside its truth, keyed by a digest of what made it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from rtdiar.config import AudioConfig, VideoConfig, build_section
from rtdiar.errors import RtdiarError
from rtdiar.media import probe, require_tool
from rtdiar.sources import FileSource

FADE_S = 0.01  # linear fade at each turn's edges, so a cut mid-word does not click


@dataclass
class CompositeConfig:
    """The `composites` section of configs/bench.yaml."""

    seed: int
    people: list[int]
    per_size: int
    duration_s: list[float]
    turn_s: list[float]
    gap_probability: float
    gap_s: list[float]
    tile_px: int
    fps: float
    voiced_db: float


def composite_config(section: dict) -> CompositeConfig:
    """The typed section, with its ranges checked: a bad range would loop forever or draw nonsense."""
    try:
        cfg = build_section(CompositeConfig, section, "composites.")
    except KeyError as exc:
        raise RtdiarError(f"config key 'composites.{exc.args[0]}' is missing") from None
    for key in ("duration_s", "turn_s", "gap_s"):
        value = getattr(cfg, key)
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                and 0 < value[0] <= value[1]):
            raise RtdiarError(f"config key 'composites.{key}' must be [low, high] with 0 < low <= high, got {value!r}")
        setattr(cfg, key, [float(v) for v in value])
    if not (isinstance(cfg.people, list) and cfg.people
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in cfg.people)):
        raise RtdiarError(f"config key 'composites.people' must be a list of people counts >= 1, got {cfg.people!r}")
    if not 0.0 <= cfg.gap_probability <= 1.0:
        raise RtdiarError(f"config key 'composites.gap_probability' must lie in [0, 1], got {cfg.gap_probability}")
    if cfg.tile_px < 2 or cfg.tile_px % 2:
        raise RtdiarError(f"config key 'composites.tile_px' must be even (H.264 4:2:0), got {cfg.tile_px}")
    if cfg.fps <= 0 or cfg.per_size < 0:
        raise RtdiarError("config keys 'composites.fps' must be > 0 and 'composites.per_size' >= 0")
    return cfg


@dataclass(frozen=True)
class Turn:
    """A stretch of the meeting where one person speaks, or nobody (`person` None)."""

    person: int | None  # tile index
    start_s: float
    end_s: float


@dataclass
class MeetingPlan:
    """Everything that fixes a meeting, drawn from the seed; rendering it is deterministic."""

    name: str
    clips: list[Path]  # one per tile, row-major
    clip_start_frames: list[int]  # each tile's first clip frame, so the loops do not line up
    grid: tuple[int, int]  # rows, cols
    duration_s: float
    turns: list[Turn]
    tile_px: int
    fps: float


def grid_shape(people: int) -> tuple[int, int]:
    """Rows and columns: side by side up to 3, then near-square (4 -> 2 x 2, 8 -> 2 x 4)."""
    rows = math.isqrt(people)
    return rows, math.ceil(people / rows)


def plan_meetings(clips: Sequence[Path], people: int, count: int, cfg: CompositeConfig,
                  seed: int, duration_s: float | None = None) -> list[MeetingPlan]:
    """`count` meetings of `people`, fixed by the seed and the clips' names (not their order)."""
    clips = sorted((Path(c) for c in clips), key=lambda c: c.name)
    if people < 1 or len(clips) < people:
        raise RtdiarError(f"a meeting of {people} people needs {people} different clips; {len(clips)} given")
    rng = np.random.default_rng([seed, people])
    lengths: dict[Path, int] = {}  # probed once per clip
    plans = []
    for index in range(count):
        chosen = [clips[i] for i in rng.choice(len(clips), people, replace=False)]
        for clip in chosen:
            lengths.setdefault(clip, _estimated_frames(clip, cfg.fps))
        starts = [int(rng.integers(lengths[clip])) for clip in chosen]
        drawn_s = duration_s if duration_s is not None else rng.uniform(*cfg.duration_s)
        total_s = max(1, round(drawn_s * cfg.fps)) / cfg.fps  # a whole number of frames
        plans.append(MeetingPlan(name=f"meeting{people}_{index:02d}", clips=chosen, clip_start_frames=starts,
                                 grid=grid_shape(people), duration_s=total_s,
                                 turns=_draw_turns(rng, people, total_s, cfg), tile_px=cfg.tile_px, fps=cfg.fps))
    return plans


def _estimated_frames(clip: Path, fps: float) -> int:
    """The clip's length in frames at `fps`, from its container; rendering wraps start frames anyway."""
    duration_s = probe(clip).duration_s or 0.0
    return max(1, round(duration_s * fps))


def _draw_turns(rng: np.random.Generator, people: int, duration_s: float, cfg: CompositeConfig) -> list[Turn]:
    """Turns that tile [0, duration_s]: the speaker changes every turn, a pause sometimes follows."""
    turns: list[Turn] = []
    t, previous = 0.0, None
    while t < duration_s:
        others = [p for p in range(people) if p != previous] or [0]
        person = others[int(rng.integers(len(others)))]
        end = min(t + rng.uniform(*cfg.turn_s), duration_s)
        turns.append(Turn(person, t, end))
        t, previous = end, person
        if t < duration_s and rng.random() < cfg.gap_probability:
            end = min(t + rng.uniform(*cfg.gap_s), duration_s)
            turns.append(Turn(None, t, end))
            t = end
    return turns


@dataclass
class Truth:
    """What a rendered meeting holds: where each person is, and who speaks at each output frame."""

    name: str
    video: Path
    fps: float
    frames: int
    width: int
    height: int
    tiles: list[tuple[int, int, int, int]]  # x1, y1, x2, y2 (x2, y2 exclusive) per person, output pixels
    clips: list[str]  # clip file name per tile
    turns: list[Turn]
    speaker: list[int | None]  # per output frame: the turn's person where their own audio is voiced

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["video"] = str(self.video)
        data["tiles"] = [list(tile) for tile in self.tiles]
        return data

    @classmethod
    def from_json(cls, data: dict) -> Truth:
        return cls(name=data["name"], video=Path(data["video"]), fps=float(data["fps"]), frames=int(data["frames"]),
                   width=int(data["width"]), height=int(data["height"]),
                   tiles=[tuple(int(v) for v in tile) for tile in data["tiles"]], clips=list(data["clips"]),
                   turns=[Turn(**turn) for turn in data["turns"]], speaker=list(data["speaker"]))


def tile_of(box: Sequence[float], tiles: Sequence[tuple[int, int, int, int]]) -> int | None:
    """The tile holding the box's centre: which person a detected face belongs to."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    for index, (tx1, ty1, tx2, ty2) in enumerate(tiles):
        if tx1 <= cx < tx2 and ty1 <= cy < ty2:
            return index
    return None


def voiced_frames(samples: np.ndarray, sample_rate: int, fps: float, frames: int, voiced_db: float) -> np.ndarray:
    """Per video frame, whether its audio is within `voiced_db` dB of the loud frames (95th percentile RMS)."""
    if frames == 0:
        return np.zeros(0, bool)
    bounds = np.round(np.arange(frames + 1) * sample_rate / fps).astype(int)
    padded = np.zeros(bounds[-1], np.float64)  # silence past the end of the samples
    kept = samples[:bounds[-1]]
    padded[:len(kept)] = kept
    rms = np.sqrt(np.add.reduceat(padded ** 2, bounds[:-1]) / np.diff(bounds))
    loud = np.percentile(rms, 95)
    if loud <= 0:
        return np.zeros(frames, bool)
    return rms >= loud * 10 ** (voiced_db / 20)


@dataclass
class _Tile:
    """One person's clip at the meeting's rate, decoded once and looped by index."""

    images: np.ndarray  # (L, tile_px, tile_px, 3) bgr uint8
    audio: np.ndarray  # L frames' worth of samples, sample 0 at clip frame 0
    voiced: np.ndarray  # (L,) bool
    start_frame: int
    samples_per_frame: float

    def image(self, frame: int) -> np.ndarray:
        return self.images[(self.start_frame + frame) % len(self.images)]

    def audio_at(self, start: int, stop: int) -> np.ndarray:
        """Output samples [start, stop) of this tile's looped sound track, in step with `image`."""
        offset = round(self.start_frame * self.samples_per_frame)
        return self.audio[(offset + np.arange(start, stop)) % len(self.audio)]

    def voiced_at(self, frames: np.ndarray) -> np.ndarray:
        return self.voiced[(self.start_frame + frames) % len(self.voiced)]


def render_meeting(plan: MeetingPlan, folder: Path, cfg: CompositeConfig, audio_cfg: AudioConfig,
                   video_cfg: VideoConfig) -> Truth:
    """folder/<name>.mp4 and folder/<name>.truth.json, reused when an earlier run made them from the same plan."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    video, truth_path = folder / f"{plan.name}.mp4", folder / f"{plan.name}.truth.json"
    digest = _plan_digest(plan, cfg, audio_cfg)
    cached = _cached_truth(video, truth_path, digest)
    if cached is not None:
        return cached
    sample_rate = audio_cfg.sample_rate
    tiles = [_load_tile(clip, start, plan, cfg, audio_cfg, video_cfg)
             for clip, start in zip(plan.clips, plan.clip_start_frames)]
    frames = round(plan.duration_s * plan.fps)
    rows, cols = plan.grid
    truth = Truth(name=plan.name, video=video, fps=plan.fps, frames=frames, width=cols * plan.tile_px,
                  height=rows * plan.tile_px, tiles=_tile_boxes(len(tiles), plan.grid, plan.tile_px),
                  clips=[clip.name for clip in plan.clips], turns=list(plan.turns),
                  speaker=_speakers(plan.turns, tiles, frames, plan.fps))
    sound = _mix(plan.turns, tiles, round(frames * sample_rate / plan.fps), sample_rate)
    # work in a hidden folder beside the targets; renames put finished files in place (the truth last)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{plan.name}.") as work:
        wav = Path(work) / "sound.wav"
        soundfile.write(wav, sound, sample_rate, subtype="FLOAT")
        _encode(Path(work) / "video.mp4", wav, tiles, plan, frames)
        (Path(work) / "truth.json").write_text(json.dumps({**truth.to_json(), "plan_digest": digest}))
        os.replace(Path(work) / "video.mp4", video)
        os.replace(Path(work) / "truth.json", truth_path)
    return truth


def _plan_digest(plan: MeetingPlan, cfg: CompositeConfig, audio_cfg: AudioConfig) -> str:
    """What decides the rendered files: the plan, plus the settings the sound and the truth depend on."""
    payload = {**dataclasses.asdict(plan), "clips": [clip.name for clip in plan.clips],
               "voiced_db": cfg.voiced_db, "sample_rate": audio_cfg.sample_rate}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cached_truth(video: Path, truth_path: Path, digest: str) -> Truth | None:
    if not (video.is_file() and truth_path.is_file()):
        return None
    try:
        data = json.loads(truth_path.read_text())
        if data.get("plan_digest") != digest:
            return None
        return dataclasses.replace(Truth.from_json(data), video=video)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: render again


def _tile_boxes(count: int, grid: tuple[int, int], tile_px: int) -> list[tuple[int, int, int, int]]:
    cols = grid[1]
    return [(c * tile_px, r * tile_px, (c + 1) * tile_px, (r + 1) * tile_px)
            for r, c in (divmod(i, cols) for i in range(count))]


def _load_tile(clip: Path, start_frame: int, plan: MeetingPlan, cfg: CompositeConfig,
               audio_cfg: AudioConfig, video_cfg: VideoConfig) -> _Tile:
    """The clip's frames as tile squares and exactly their length of aligned sound (silence-padded)."""
    images = _decode_squares(clip, plan.tile_px, plan.fps)
    samples_per_frame = audio_cfg.sample_rate / plan.fps
    period = round(len(images) * samples_per_frame)
    audio = FileSource(clip, None, "fast", video_cfg, audio_cfg).aligned_audio()[:period]
    audio = np.pad(audio, (0, period - len(audio)))
    voiced = voiced_frames(audio, audio_cfg.sample_rate, plan.fps, len(images), cfg.voiced_db)
    return _Tile(images, audio, voiced, start_frame, samples_per_frame)


def _decode_squares(clip: Path, tile_px: int, fps: float) -> np.ndarray:
    """Frames at `fps`, scaled to cover a tile_px square and centre-cropped; frame 0 is the clip's first."""
    squares = f"fps={fps},scale={tile_px}:{tile_px}:force_original_aspect_ratio=increase,crop={tile_px}:{tile_px}"
    cmd = [require_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(clip), "-map", "0:v:0", "-vf", squares,
           "-fps_mode", "passthrough", "-pix_fmt", "bgr24", "-f", "rawvideo", "-"]
    pixels = bytearray()  # grown in place and viewed by numpy: the frames are held once, not twice
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
        with proc.stdout:
            while chunk := proc.stdout.read(1 << 22):
                pixels += chunk
        if proc.wait() != 0 or not pixels:
            errors.seek(0)
            raise RtdiarError(f"cannot decode video of {clip}: {_last_line(errors.read(), 'no frames')}")
    return np.frombuffer(pixels, np.uint8).reshape(-1, tile_px, tile_px, 3)


def _speakers(turns: list[Turn], tiles: list[_Tile], frames: int, fps: float) -> list[int | None]:
    """Frame k is p's speech when its start time lies in p's turn and p's own audio is voiced there."""
    times_s = np.arange(frames) / fps
    speaker: list[int | None] = [None] * frames
    for turn in turns:
        if turn.person is None:
            continue
        inside = np.flatnonzero((times_s >= turn.start_s) & (times_s < turn.end_s))
        for k in inside[tiles[turn.person].voiced_at(inside)]:
            speaker[int(k)] = turn.person
    return speaker


def _mix(turns: list[Turn], tiles: list[_Tile], total_samples: int, sample_rate: int) -> np.ndarray:
    """During p's turn, p's own tile sound at the same moment (faded at the edges); silence elsewhere."""
    sound = np.zeros(total_samples, np.float32)
    fade_samples = max(1, round(FADE_S * sample_rate))
    for turn in turns:
        start, stop = round(turn.start_s * sample_rate), min(round(turn.end_s * sample_rate), total_samples)
        if turn.person is None or stop <= start:
            continue
        ramp = np.arange(stop - start)
        envelope = np.minimum(1.0, np.minimum(ramp + 1, stop - start - ramp) / fade_samples)
        sound[start:stop] = envelope * tiles[turn.person].audio_at(start, stop)
    return sound


def _encode(target: Path, wav: Path, tiles: list[_Tile], plan: MeetingPlan, frames: int) -> None:
    """H.264 + AAC, frames composed one at a time and streamed to ffmpeg (nothing held in memory)."""
    rows, cols = plan.grid
    side = plan.tile_px
    cmd = [require_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
           "-s", f"{cols * side}x{rows * side}", "-r", str(plan.fps), "-i", "-", "-i", str(wav),
           "-map", "0:v:0", "-map", "1:a:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mp4", str(target)]
    canvas = np.zeros((rows * side, cols * side, 3), np.uint8)  # tiles without a person stay black
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=errors)
        try:
            for k in range(frames):
                for index, tile in enumerate(tiles):
                    r, c = divmod(index, cols)
                    canvas[r * side:(r + 1) * side, c * side:(c + 1) * side] = tile.image(k)
                proc.stdin.write(canvas.data)
        except BrokenPipeError:
            pass  # ffmpeg stopped early: its status and message say why
        finally:
            try:
                proc.stdin.close()  # also ends ffmpeg when interrupted, so none is left behind
            except BrokenPipeError:
                pass
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            raise RtdiarError(f"ffmpeg failed to encode {plan.name}: {_last_line(errors.read(), f'exit status {code}')}")


def _last_line(stderr: bytes, default: str) -> str:
    return (stderr.decode(errors="replace").strip().splitlines() or [default])[-1]
