"""`rtdiar bench`: who speaks, scored against exact truth, as a user runs the engine.

No labelled multi-speaker recordings exist here, so meetings are composed from real single-speaker
clips of people never seen in training (`rtdiar.lab.composite`): every tile is in sync with its own
audio, only the turn's person is heard, the others keep moving their lips. Each meeting goes
through `rtdiar --video M.mp4 --no-window --jsonl M.jsonl` in a child process, and the JSON lines
are scored: the speaker's box is mapped to its tile and compared, frame by frame, with the truth.

The real recordings of `dev/multi` are run the same way: the singer in hamilton, false alarms in
the crowd nobody in which speaks.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtdiar.lab.composite import CompositeConfig, Truth, composite_config, plan_meetings, render_meeting, tile_of
from rtdiar.config import PROJECT_ROOT, Config, build_section, merge_settings, read_yaml
from rtdiar.errors import RtdiarError
from rtdiar.types import FaceResult, FrameResult

BENCH_CONFIG = PROJECT_ROOT / "configs" / "bench.yaml"
DEV_DATA = PROJECT_ROOT.parent / "shared" / "data" / "dev"
COMPOSITE_CACHE = Path.home() / ".cache" / "rtdiar" / "composites"


@dataclass
class ScoringConfig:
    collar_s: float


@dataclass
class SpeedConfig:
    faces: list
    duration_s: float
    tile_px: int
    variants: list
    model_faces: list


@dataclass
class SoakConfig:
    minutes: float
    faces: int


@dataclass
class BenchConfig:
    composites: CompositeConfig
    scoring: ScoringConfig
    speed: SpeedConfig
    soak: SoakConfig


def load_bench_config(path: Path | None = None) -> BenchConfig:
    """configs/bench.yaml, overlaid by a user's partial file of the same shape."""
    data = read_yaml(BENCH_CONFIG)
    if path is not None:
        data = merge_settings(data, read_yaml(Path(path)), "")
    return BenchConfig(composite_config(data["composites"]),
                       build_section(ScoringConfig, data["scoring"], "scoring."),
                       build_section(SpeedConfig, data["speed"], "speed."),
                       build_section(SoakConfig, data["soak"], "soak."))


def read_results(path: Path) -> list[FrameResult]:
    """A JSON lines file written by `rtdiar --jsonl`, back as FrameResults (no images, no VAD flag)."""
    results = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            faces = [FaceResult(face["id"], tuple(face["box"]), face["score"], face["speaking"])
                     for face in row["faces"]]
            results.append(FrameResult(row["frame"], row["t"], faces, row["speaker"], row["latency_ms"]))
    return results


def predicted_tiles(results: list[FrameResult], tiles: list[tuple[int, int, int, int]],
                    frames: int) -> list[int | None]:
    """Per frame, the tile holding the chosen speaker's box; None for nobody (or a dropped frame)."""
    predicted: list[int | None] = [None] * frames
    for result in results:
        if result.speaker is None or not 0 <= result.frame < frames:
            continue
        box = next(face.box for face in result.faces if face.id == result.speaker)
        predicted[result.frame] = tile_of(box, tiles)
    return predicted


def faces_found(results: list[FrameResult], tiles: list[tuple[int, int, int, int]], frames: int) -> float:
    """Share of (frame, person) pairs with a tracked face in that person's tile: who is never found
    cannot be picked, so this bounds the accuracy."""
    found = {(result.frame, tile_of(face.box, tiles)) for result in results for face in result.faces}
    return sum(tile is not None for _, tile in found) / (frames * len(tiles)) if frames else 0.0


def collar_mask(truth: Truth, collar_s: float) -> np.ndarray:
    """Frames within `collar_s` after a turn change (a new turn or a pause begins)."""
    times = np.arange(truth.frames) / truth.fps
    mask = np.zeros(truth.frames, dtype=bool)
    for turn in truth.turns[1:]:
        mask |= (times >= turn.start_s) & (times < turn.start_s + collar_s)
    return mask


@dataclass
class Tally:
    """Frame counts, summed over meetings: every figure is a ratio of two of them."""

    speech: int = 0
    correct: int = 0
    missed: int = 0
    speech_outside_collar: int = 0
    correct_outside_collar: int = 0
    silent: int = 0
    false_alarm: int = 0
    switch_delays_s: list = field(default_factory=list)
    switches_never: int = 0

    def add_meeting(self, truth: Truth, predicted: list[int | None], collar_s: float) -> None:
        want = np.array([-1 if s is None else s for s in truth.speaker])
        got = np.array([-1 if p is None else p for p in predicted])
        speech, outside = want >= 0, ~collar_mask(truth, collar_s)
        self.speech += int(speech.sum())
        self.correct += int((speech & (got == want)).sum())
        self.missed += int((speech & (got < 0)).sum())
        self.speech_outside_collar += int((speech & outside).sum())
        self.correct_outside_collar += int((speech & outside & (got == want)).sum())
        self.silent += int((~speech).sum())
        self.false_alarm += int((~speech & (got >= 0)).sum())
        for delay in switch_delays(truth, got):
            if delay is None:
                self.switches_never += 1
            else:
                self.switch_delays_s.append(delay)

    def merge(self, other: Tally) -> None:
        """Add another tally's counts (a meeting's into its size's and the total)."""
        for name in (f.name for f in dataclasses.fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self) -> dict:
        def ratio(part: int, whole: int) -> float | None:
            return part / whole if whole else None

        delays = np.array(self.switch_delays_s)
        return {"speech_frames": self.speech, "silent_frames": self.silent,
                "accuracy": ratio(self.correct, self.speech),
                "accuracy_outside_collar": ratio(self.correct_outside_collar, self.speech_outside_collar),
                "false_alarm": ratio(self.false_alarm, self.silent),
                "missed": ratio(self.missed, self.speech),
                "switches": len(delays) + self.switches_never,
                "switch_never": ratio(self.switches_never, len(delays) + self.switches_never),
                "switch_median_s": float(np.median(delays)) if len(delays) else None,
                "switch_p90_s": float(np.percentile(delays, 90)) if len(delays) else None}


def switch_delays(truth: Truth, predicted: np.ndarray) -> list[float | None]:
    """For every speaking turn: seconds from its first voiced frame until the engine first picks that
    person within the turn; None if it never does (turns with no voiced frame are skipped)."""
    delays: list[float | None] = []
    for turn in truth.turns:
        if turn.person is None:
            continue
        first, stop = int(np.ceil(turn.start_s * truth.fps - 1e-9)), min(truth.frames, int(np.ceil(turn.end_s * truth.fps - 1e-9)))
        voiced = [k for k in range(first, stop) if truth.speaker[k] == turn.person]
        if not voiced:
            continue
        picked = [k for k in range(voiced[0], stop) if predicted[k] == turn.person]
        delays.append((picked[0] - voiced[0]) / truth.fps if picked else None)
    return delays


def annotation(labels: list, fps: float, uri: str):
    """Per-frame labels (None = nobody) as a pyannote Annotation of their runs."""
    from pyannote.core import Annotation, Segment

    from rtdiar.outputs import speaker_turns

    timeline = [(k / fps, label) for k, label in enumerate(labels)] + [(len(labels) / fps, None)]
    result = Annotation(uri=uri)
    for index, (label, start_s, end_s) in enumerate(speaker_turns(timeline)):
        result[Segment(start_s, end_s), index] = label
    return result


def hypothesis_labels(results: list[FrameResult], frames: int) -> list[str | None]:
    """Per frame the engine's speaker as the user sees it (`face<id>`), whatever tile it is in."""
    labels: list[str | None] = [None] * frames
    for result in results:
        if result.speaker is not None and 0 <= result.frame < frames:
            labels[result.frame] = f"face{result.speaker}"
    return labels


def run_engine_cli(video: Path, jsonl: Path, model_args: list[str]) -> float:
    """`rtdiar --video V --no-window --jsonl J`, exactly as a user would run it; its wall time in seconds."""
    command = [sys.executable, "-m", "rtdiar", "--video", str(video), "--no-window", "--pace", "fast",
               "--jsonl", str(jsonl), "--overwrite", *model_args]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RtdiarError(f"rtdiar failed on {video.name}: {last}")
    return time.monotonic() - start


def dev_clips(data_dir: Path = DEV_DATA) -> list[Path]:
    """The single-speaker clips meetings are made of: dev/wild, people never seen in training."""
    folder = Path(data_dir) / "wild"
    if not folder.is_dir():
        raise RtdiarError(f"no clips at {folder}: pass --data DIR (a folder with wild/ and multi/)")
    return sorted(p for p in folder.iterdir() if p.is_file())


def sized_meeting(cfg: BenchConfig, people: int, duration_s: float, tile_px: int, name: str,
                  cache_dir: Path, config: Config, data_dir: Path = DEV_DATA) -> Truth:
    """One meeting of a given size and length (speed and soak runs), rendered or reused."""
    comp = dataclasses.replace(cfg.composites, tile_px=tile_px)
    plan = plan_meetings(dev_clips(data_dir), people, 1, comp, comp.seed, duration_s=duration_s)[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    return render_meeting(dataclasses.replace(plan, name=name), cache_dir, comp, config.audio, config.video)


def meeting_suite(cfg: BenchConfig, clips: list[Path], cache_dir: Path, config: Config) -> list[Truth]:
    """Every meeting of the accuracy suite, rendered (or reused from the cache)."""
    comp = cfg.composites
    plans = [plan for people in comp.people
             for plan in plan_meetings(clips, people, comp.per_size, comp, comp.seed)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    return [render_meeting(plan, cache_dir, comp, config.audio, config.video) for plan in plans]


def bench_meetings(cfg: BenchConfig, config: Config, out_dir: Path, model_args: list[str],
                   cache_dir: Path = COMPOSITE_CACHE, data_dir: Path = DEV_DATA) -> dict:
    """Accuracy figures per meeting size and overall, with DER from pyannote.metrics."""
    from pyannote.core import Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    truths = meeting_suite(cfg, dev_clips(data_dir), cache_dir, config)
    by_size: dict[str, tuple[Tally, DiarizationErrorRate]] = {f"{n} people": (Tally(), DiarizationErrorRate())
                                                               for n in sorted({len(t.tiles) for t in truths})}
    by_size["all"] = (Tally(), DiarizationErrorRate())
    rows = []
    for truth in truths:
        jsonl = out_dir / f"{truth.name}.jsonl"
        wall_s = run_engine_cli(truth.video, jsonl, model_args)
        results = read_results(jsonl)
        predicted = predicted_tiles(results, truth.tiles, truth.frames)
        meeting = Tally()
        meeting.add_meeting(truth, predicted, cfg.scoring.collar_s)
        reference = annotation([None if s is None else f"person{s}" for s in truth.speaker], truth.fps, truth.name)
        hypothesis = annotation(hypothesis_labels(results, truth.frames), truth.fps, truth.name)
        for key in (f"{len(truth.tiles)} people", "all"):
            tally, der = by_size[key]
            tally.merge(meeting)
            der(reference, hypothesis, uem=Segment(0.0, truth.frames / truth.fps))
        rows.append({"meeting": truth.name, "clips": truth.clips, "seconds": truth.frames / truth.fps,
                     "wall_s": wall_s, "faces_found": faces_found(results, truth.tiles, truth.frames),
                     **meeting.figures()})
    return {"meetings": rows,
            "summary": {key: {**tally.figures(), "der": abs(der)} for key, (tally, der) in by_size.items()}}


def voiced_by_vad(video: Path, results: list[FrameResult], config: Config) -> list[FrameResult]:
    """Marks each result's `speech` with Silero VAD over the 0.2 s before the frame, as the engine's
    own gate hears it (the JSON lines do not carry it)."""
    from rtdiar.audio import VoiceActivity
    from rtdiar.sources import FileSource

    source = FileSource(video, None, "fast", config.video, config.audio)
    vad = VoiceActivity(config.audio.sample_rate, history_s=max(60.0, source.video_info.duration_s or 0.0) + 60.0)
    vad.push(source.aligned_audio())
    window_s = config.window.mel_frames / 80.0
    for result in results:
        prob = vad.speech_prob(result.t - window_s, result.t)
        result.speech = prob is not None and prob >= config.decision.vad_threshold
    return results


def bench_recordings(config: Config, out_dir: Path, model_args: list[str], data_dir: Path = DEV_DATA) -> dict:
    """The singer of hamilton and the silent crowd, run through the command line."""
    from rtdiar.lab.evaluate import CROWD, HAMILTON, crowd_figure, hamilton_figure

    figures = {}
    for name, figure in ((HAMILTON, hamilton_figure), (CROWD, crowd_figure)):
        video = data_dir / "multi" / name
        jsonl = out_dir / f"{video.stem}.jsonl"
        run_engine_cli(video, jsonl, model_args)
        figures[video.stem] = figure(voiced_by_vad(video, read_results(jsonl), config))
    return figures


def _cell(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if percent else f"{value:.2f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table, cells already formatted (the benchmark's tables are pasted into docs/)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def format_accuracy(figures: dict, collar_s: float) -> str:
    """Markdown tables: the summary per meeting size, then every meeting."""
    summary = markdown_table(
        ["meetings", "speech frames", "accuracy", f"accuracy, {collar_s:g} s collar", "false alarm (silent frames)",
         "missed speech", "switch median / p90 s", "never switched", "DER"],
        [[key, fig["speech_frames"], _cell(fig["accuracy"]), _cell(fig["accuracy_outside_collar"]),
          _cell(fig["false_alarm"]), _cell(fig["missed"]),
          f"{_cell(fig['switch_median_s'], False)} / {_cell(fig['switch_p90_s'], False)}",
          _cell(fig["switch_never"]), _cell(fig["der"])] for key, fig in figures["summary"].items()])
    meetings = markdown_table(
        ["meeting", "clips (tiles in reading order)", "seconds", "engine wall s", "faces found", "accuracy",
         "false alarm", "missed"],
        [[row["meeting"], ", ".join(row["clips"]), f"{row['seconds']:.1f}", f"{row['wall_s']:.1f}",
          _cell(row["faces_found"]), _cell(row["accuracy"]), _cell(row["false_alarm"]), _cell(row["missed"])]
         for row in figures["meetings"]])
    return f"{summary}\n\n{meetings}"


def format_recordings(figures: dict) -> str:
    """The real recordings in two lines."""
    ham = figures["hamilton_two_faces_one_singer"]
    crowd = figures["crowd_nobody_speaks"]
    return (f"hamilton: performer chosen on {_cell(ham['performer_chosen'])} of {ham['voiced_frames_performer_shown']} "
            f"voiced frames with him on screen (highest score {_cell(ham['performer_top_score'])}); "
            f"audience chosen on {_cell(ham['audience_chosen'])} of {ham['voiced_frames_performer_hidden']} voiced "
            f"frames without him\ncrowd: a speaker chosen on {_cell(crowd['speaker_chosen'])} of {crowd['frames']} frames "
            f"(VAD heard speech on {_cell(crowd['speech_heard'])})")
