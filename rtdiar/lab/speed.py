"""`rtdiar bench --speed` and `--soak`: where a frame's time goes, how late decisions come, how memory holds.

Every run is the real engine on a composite meeting of N people (`rtdiar.lab.composite`), in process so
the per-stage clock (`Diarizer.times`) can be read:
- fast pace: throughput and milliseconds per frame for each stage (decode, detect, track, crop, mel,
  VAD, model, decision, and drawing the annotated picture, timed here on every result);
- realtime pace: the file replayed as a camera; latency from capture to decision (p50, p95) and the
  frames dropped because processing fell behind.
Model variants are (arch, runtime, device); the timings do not depend on the weights' values, so an
arch without shipped weights (wav2lip) runs with random ones.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdiar.audio import MFCC_N_CEPSTRA
from rtdiar.config import Config, load_config
from rtdiar.drawing import annotate
from rtdiar.engine import Diarizer
from rtdiar.lab.bench import BenchConfig, markdown_table, sized_meeting
from rtdiar.scorers.base import Scorer, ScorerNeeds, TrackWindow
from rtdiar.scorers.inference import MEL_SHAPE, load_scorer
from rtdiar.sources import FileSource
from rtdiar.windows import MFCC_PER_FRAME

STARTUP_S = 2.0  # realtime latency is also reported without the first seconds (model warm-up, first window)


@dataclass(frozen=True)
class Variant:
    """One way of running the model."""

    arch: str
    runtime: str
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.arch} / {self.runtime} / {self.device}"


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def variant_config(config_file: Path | None, variant: Variant, weights_dir: Path) -> Config:
    """The run-time config (defaults, then the user's file) for a variant: a known model by name
    (`rtdiar weights`) with its own weights; an arch other than the shipped weights' gets random
    weights of its own in `weights_dir`."""
    from rtdiar.scorers.registry import MODELS
    from rtdiar.scorers.syncnet import build_model, save_weights, weights_arch

    overrides = {"model.arch": variant.arch, "model.runtime": variant.runtime, "model.device": variant.device}
    if variant.arch in MODELS:
        return load_config(config_file, {**overrides, "model.arch": "auto", "model.weights": variant.arch})
    shipped = load_config(config_file).model.weights_path()
    if variant.arch != "baseline" and (not shipped.exists() or weights_arch(shipped) != variant.arch):
        path = weights_dir / f"random_{variant.arch}.safetensors"
        if not path.exists():
            save_weights(build_model(variant.arch), path, variant.arch, {"note": "random weights, timing only"})
        overrides["model.weights"] = str(path)
    return load_config(config_file, overrides)


def measure_fast(video: Path, config: Config, scorer: Scorer) -> dict:
    """Throughput and per-stage milliseconds per frame, drawing included, nothing dropped."""
    source = FileSource(video, None, "fast", config.video, config.audio)
    diarizer = Diarizer(config, scorer)
    frames = faces = 0
    drawing_s = first_s = 0.0
    start = time.perf_counter()
    for result in diarizer.run(source):
        first_s = first_s or time.perf_counter() - start
        tick = time.perf_counter()
        annotate(result.image, result)
        drawing_s += time.perf_counter() - tick
        frames += 1
        faces += sum(face.score is not None for face in result.faces)
    # throughput after the first result: start-up (detector and model warm-up, the first window) is reported apart
    steady_s = time.perf_counter() - start - drawing_s - first_s
    stages = diarizer.times.per_frame_ms(frames)
    stages["drawing"] = drawing_s * 1000.0 / max(frames, 1)
    fps = (frames - 1) / steady_s
    return {"frames": frames, "scored_faces_per_frame": faces / max(frames, 1), "startup_s": first_s,
            "fps": fps, "x_realtime": fps / source.fps, "stages_ms": stages, "dropped": diarizer.stats()["dropped"]}


def measure_realtime(video: Path, config: Config, scorer: Scorer) -> dict:
    """Replayed as a camera: latency percentiles from capture to decision, and dropped frames."""
    source = FileSource(video, None, "realtime", config.video, config.audio)
    diarizer = Diarizer(config, scorer)
    latencies, times = [], []
    for result in diarizer.run(source):
        latencies.append(result.latency_ms)
        times.append(result.t)
    latency, t = np.array(latencies), np.array(times)
    steady = latency[t >= STARTUP_S] if (t >= STARTUP_S).any() else latency
    total = int(round((source.video_info.duration_s or 0.0) * source.fps))
    return {"processed": len(latency), "frames": total, "dropped": diarizer.stats()["dropped"],
            "latency_p50_ms": float(np.percentile(latency, 50)), "latency_p95_ms": float(np.percentile(latency, 95)),
            "steady_p50_ms": float(np.percentile(steady, 50)), "steady_p95_ms": float(np.percentile(steady, 95))}


def bench_speed(videos: dict[int, Path], variants: list[Variant], config_file: Path | None,
                model_faces: list[int]) -> dict:
    """Every variant loaded once: on every meeting size a fast run and a realtime replay, then the model alone."""
    rows, model = [], {}
    with tempfile.TemporaryDirectory(prefix="rtdiar-bench-") as scratch:
        for variant in variants:
            config = variant_config(config_file, variant, Path(scratch))
            started = time.perf_counter()
            scorer = load_scorer(config)
            load_s = time.perf_counter() - started
            label = Variant(variant.arch, scorer.runtime, variant.device).label  # what actually ran
            for faces, video in sorted(videos.items()):
                row = {"variant": label, "faces": faces, "load_s": load_s,
                       "fast": measure_fast(video, config, scorer), "realtime": measure_realtime(video, config, scorer)}
                rows.append(row)
                print(format_speed_row(row), flush=True)
            model[label] = measure_model(scorer, model_faces)
    return {"runs": rows, "model_ms": model}


def sound_window(needs: ScorerNeeds, rng: np.random.Generator, steps: int) -> Callable[[int], np.ndarray]:
    """The random sound window of each step: a mel window (the lip-sync experts read one), or the
    MFCC rows of the `audio_frames` frames up to the step, from one stream (the active-speaker models
    keep what an earlier window computed)."""
    if needs.audio == "mel":
        mel = rng.standard_normal(MEL_SHAPE).astype(np.float32)
        return lambda step: mel
    stream = rng.standard_normal((MFCC_PER_FRAME * (needs.audio_frames + steps), MFCC_N_CEPSTRA)).astype(np.float32)
    return lambda step: stream[MFCC_PER_FRAME * step:MFCC_PER_FRAME * (step + needs.audio_frames)]


def measure_model(scorer: Scorer, faces: list[int], calls: int = 30) -> dict[int, float]:
    """Milliseconds per `score_frame` call (N tracks, each a new frame, and the sound window one frame
    on, as live) on random input, after as many calls of warm-up (a streaming model's window fills):
    the model's share alone (FaceMesh, for a model that reads lip points, is the engine's `lips`
    stage), and how many tracks it could score 25 times a second."""
    rng = np.random.default_rng(0)
    needs = scorer.needs
    crop = needs.crop(rng.integers(0, 256, (360, 360, 3), dtype=np.uint8), np.array([90.0, 60.0, 270.0, 300.0]))
    crops = np.stack([crop] * needs.frames)
    window = sound_window(needs, rng, 2 * calls)
    lips = rng.normal(0.0, 0.5, (needs.frames, 42, 2)).astype(np.float32) if needs.lips else None
    timings = {}
    for n in faces:
        tracks = [TrackWindow(track_id, crops, lips) for track_id in range(n)]
        for step in range(calls):
            scorer.score_frame(step, tracks, window(step))
        start = time.perf_counter()
        for step in range(calls, 2 * calls):
            scorer.score_frame(step, tracks, window(step))
        timings[n] = (time.perf_counter() - start) * 1000.0 / calls
        for track_id in range(n):
            scorer.forget(track_id)
    return timings


def soak(video: Path, config: Config, scorer: Scorer, pace: str, window_s: float = 60.0) -> dict:
    """One long run: latency and memory over its first and last `window_s` of video, and drops."""
    source = FileSource(video, None, pace, config.video, config.audio)
    diarizer = Diarizer(config, scorer)
    duration_s = source.video_info.duration_s or 0.0
    first, last, memory = [], [], []
    frames = 0
    start = time.perf_counter()
    for result in diarizer.run(source):
        frames += 1
        if result.t < window_s:
            first.append(result.latency_ms)
        elif result.t >= duration_s - window_s:
            last.append(result.latency_ms)
        if frames % 250 == 1:  # every 10 s of 25 fps video, from the first frame
            memory.append(resident_mb())
    memory.append(resident_mb())
    return {"pace": pace, "video_s": duration_s, "wall_s": time.perf_counter() - start, "processed": frames,
            "dropped": diarizer.stats()["dropped"],
            "first_min": _latency(first), "last_min": _latency(last),
            "memory_mb_start": memory[0], "memory_mb_end": memory[-1], "memory_mb_max": max(memory)}


def _latency(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None}
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


def format_speed_row(row: dict) -> str:
    """One line per run, for the progress log."""
    fast, rt = row["fast"], row["realtime"]
    return (f"{row['variant']:<28} {row['faces']} faces: fast {fast['fps']:.1f} fps ({fast['x_realtime']:.2f}x real time, "
            f"{fast['scored_faces_per_frame']:.2f} faces scored/frame); realtime p50/p95 {rt['steady_p50_ms']:.0f}/"
            f"{rt['steady_p95_ms']:.0f} ms, dropped {rt['dropped']} of {rt['frames']}")


def format_speed(rows: list[dict]) -> str:
    """Markdown: end-to-end figures per variant and faces, then per-stage milliseconds per frame."""
    end_to_end = markdown_table(
        ["model / runtime / device", "faces", "scored faces per frame", "fast fps", "× real time", "start-up s",
         "realtime latency p50 / p95 ms (after 2 s)", "dropped in realtime"],
        [[row["variant"], row["faces"], f"{row['fast']['scored_faces_per_frame']:.2f}", f"{row['fast']['fps']:.1f}",
          f"{row['fast']['x_realtime']:.2f}", f"{row['fast']['startup_s']:.1f}",
          f"{row['realtime']['steady_p50_ms']:.0f} / {row['realtime']['steady_p95_ms']:.0f}",
          f"{row['realtime']['dropped']} of {row['realtime']['frames']}"] for row in rows])
    stages = list(dict.fromkeys(name for row in rows for name in row["fast"]["stages_ms"]))
    per_stage = markdown_table(
        ["model / runtime / device", "faces", *stages],
        [[row["variant"], row["faces"], *(f"{row['fast']['stages_ms'].get(name, 0.0):.2f}" for name in stages)]
         for row in rows])
    return f"{end_to_end}\n\n{per_stage}"


def parse_variants(names: list[str]) -> list[Variant]:
    """`arch/runtime[/device]` strings from configs/bench.yaml; CUDA variants added when torch sees a GPU."""
    import torch

    variants = [Variant(*name.split("/")) for name in names]
    if torch.cuda.is_available():
        archs = dict.fromkeys(v.arch for v in variants)
        variants += [Variant(arch, "torch", "cuda") for arch in archs]
    return variants


def run_speed_bench(cfg: BenchConfig, config_file: Path | None, base: Config, cache_dir: Path,
                    data_dir: Path) -> dict:
    """The meetings of every size rendered (or reused), then every variant timed on them."""
    videos = {n: sized_meeting(cfg, n, cfg.speed.duration_s, cfg.speed.tile_px, f"speed{n}", cache_dir, base,
                               data_dir).video for n in cfg.speed.faces}
    return bench_speed(videos, parse_variants(cfg.speed.variants), config_file, cfg.speed.model_faces)


def run_soak(cfg: BenchConfig, config: Config, cache_dir: Path, data_dir: Path) -> list[dict]:
    """A `soak.minutes` meeting of `soak.faces` people, replayed in realtime, then run fast."""
    truth = sized_meeting(cfg, cfg.soak.faces, cfg.soak.minutes * 60.0, cfg.speed.tile_px, f"soak{cfg.soak.faces}",
                          cache_dir, config, data_dir)
    scorer = load_scorer(config)
    runs = []
    for pace in ("realtime", "fast"):
        runs.append(soak(truth.video, config, scorer, pace))
        print(format_soak([runs[-1]]), flush=True)
    return runs


def format_model(model: dict) -> str:
    """Markdown: milliseconds per model call by number of face windows."""
    sizes = list(dict.fromkeys(n for timings in model.values() for n in timings))
    return markdown_table(["model / runtime / device", *(f"{n} faces" for n in sizes)],
                          [[label, *(f"{timings[n]:.1f}" for n in sizes)] for label, timings in model.items()])


def format_soak(runs: list[dict]) -> str:
    """Markdown: one row per soak run."""
    return markdown_table(
        ["pace", "video min", "wall min", "processed", "dropped", "latency p50 / p95 ms, first min", "last min",
         "memory MB start / end / max"],
        [[run["pace"], f"{run['video_s'] / 60:.1f}", f"{run['wall_s'] / 60:.1f}", run["processed"], run["dropped"],
          _ms(run["first_min"]), _ms(run["last_min"]),
          f"{run['memory_mb_start']:.0f} / {run['memory_mb_end']:.0f} / {run['memory_mb_max']:.0f}"] for run in runs])


def _ms(latency: dict) -> str:
    return "–" if latency["p50_ms"] is None else f"{latency['p50_ms']:.0f} / {latency['p95_ms']:.0f}"
