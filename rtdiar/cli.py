"""`rtdiar`: the thin command line over the library (Diarizer, sources, sinks, window)."""

from __future__ import annotations

import argparse
import functools
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from rtdiar.config import Config, load_config
from rtdiar.errors import RtdiarError
from rtdiar.scorers.registry import build_weights_parser, judgement_line, weights_command
from rtdiar.signals import stop_on_signals

DESCRIPTION = """\
Real-time audio-visual speaker diarization: shows who is speaking by checking whose lips move in
sync with the voice. By default: rtdiar's sync head on LR-ASD's front ends, fused with LR-ASD's
speaking score, once `rtdiar weights download lrasd-ava` is done; else rtdiar's own lip-sync experts.

  rtdiar --camera 0                                  live window: webcam + default microphone
  rtdiar --video talk.mp4                            replay a file in real time in the window
  rtdiar --video talk.mp4 --no-window --jsonl out.jsonl --rttm out.rttm --annotated out.mp4 --plot out.png

other commands (each has --help):
  rtdiar offset FILE [--json] [--fix OUT]           audio-video offset of a clip and its confidence
  rtdiar train                                       train the lip-sync expert (configs/train.yaml)
  rtdiar evaluate                                    the model's figures on unseen people (../shared/data/dev)
  rtdiar bench [--speed | --soak]                    who-speaks accuracy on composite meetings; speed; soak
  rtdiar weights [download NAME... [--from DIR]]     models by name for --weights; fetch third-party ones
  rtdiar batch INPUT... --out DIR [--workers N]      an archive of recordings, resumable, in parallel
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtdiar", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("input (one of --camera / --video)")
    one = src.add_mutually_exclusive_group(required=True)
    one.add_argument("--camera", metavar="INDEX", help="webcam index (0 = first camera) or device path")
    one.add_argument("--video", metavar="FILE", type=Path, help="recorded video file")
    src.add_argument("--audio", metavar="FILE", type=Path,
                     help="audio for --video when it is not the video's own sound track")
    src.add_argument("--mic", metavar="NAME|INDEX", help="microphone for --camera (default: the system's default input)")
    src.add_argument("--pace", choices=("realtime", "fast"),
                     help="realtime: replay --video as a camera would deliver it (frames dropped if processing lags); "
                          "fast: as fast as possible, never dropping. Default: realtime with the window, fast with --no-window")

    out = parser.add_argument_group("outputs (each optional; existing files are kept unless --overwrite)")
    out.add_argument("--no-window", action="store_true", help="headless: no Qt window")
    out.add_argument("--jsonl", metavar="PATH", type=Path, help="one JSON object per frame (see README for the contract)")
    out.add_argument("--rttm", metavar="PATH", type=Path, help="RTTM, one SPEAKER line per speaking turn, speakers face<id>")
    out.add_argument("--annotated", metavar="PATH.mp4", type=Path, help="video with boxes, ids and the speaker, original audio muxed in")
    out.add_argument("--plot", metavar="PATH.png", type=Path, help="every face's score over time, the decision marked")
    out.add_argument("--save-faces", metavar="DIR", type=Path, help="one cropped video per face track (face<id>.mp4)")
    out.add_argument("--overwrite", action="store_true", help="replace output files that already exist")

    tune = add_model_arguments(parser)
    tune.add_argument("--stride", metavar="N", type=int, help="score every N frames (the decision reuses the last scores between)")
    tune.add_argument("--detect-every", metavar="N", type=int,
                      help="detect faces every N frames, keeping their last boxes between (faster; boxes up to N-1 frames old)")
    tune.add_argument("--smooth", metavar="WINDOWS", type=int, help="causal moving average length, in scored windows")
    tune.add_argument("--threshold", metavar="SCORE", type=float, help="smoothed score a face needs to become the speaker")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--config and the model flags, shared by every command that scores."""
    tune = parser.add_argument_group("settings (defaults in configs/default.yaml)")
    tune.add_argument("--config", metavar="FILE", type=Path, help="YAML file overriding configs/default.yaml")
    tune.add_argument("--weights", metavar="NAME|FILE",
                      help="model weights: a known name (`rtdiar weights` lists them) or a path "
                           "(rtdiar's .safetensors or Wav2Lip's lipsync_expert.pth)")
    tune.add_argument("--arch", metavar="NAME",
                      help="model architecture (default: configs/default.yaml, or what an rtdiar weights file names)")
    tune.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the model runs (auto: CUDA if available)")
    tune.add_argument("--runtime", choices=("auto", "torch", "onnx"),
                      help="what runs the model (auto: ONNX Runtime on the CPU, torch on CUDA; the baseline always runs in torch)")
    return tune


def config_from_args(args: argparse.Namespace) -> Config:
    """configs/default.yaml, then --config, then the flags."""
    return load_config(args.config, {
        "model.weights": args.weights,
        "model.arch": args.arch,
        "model.device": args.device,
        "model.runtime": args.runtime,
        "model.stride_frames": getattr(args, "stride", None),
        "detector.every_frames": getattr(args, "detect_every", None),
        "decision.smooth_windows": getattr(args, "smooth", None),
        "decision.threshold": getattr(args, "threshold", None),
        "offset.max_shift": getattr(args, "max_shift", None),
    })


def _check_args(args: argparse.Namespace) -> None:
    for name in ("stride", "smooth", "detect_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RtdiarError(f"--{name.replace('_', '-')} must be at least 1")
    if args.camera is not None and args.audio is not None:
        raise RtdiarError("--audio goes with --video; the camera's sound comes from --mic")
    if args.video is None and args.pace is not None:
        raise RtdiarError("--pace goes with --video; a camera is always live")
    if not args.no_window and not _has_display():
        raise RtdiarError("no display to open the window on: pass --no-window, or run on a desktop (or under xvfb-run)")


def _has_display() -> bool:
    """Qt aborts the process without a display, so say it first (QT_QPA_PLATFORM=offscreen counts as one)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def _output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Check every requested output before any work, so nothing the user has is overwritten."""
    from rtdiar.outputs import check_output_path

    inputs = [p for p in (args.video, args.audio) if p is not None]
    paths = {name: check_output_path(path, args.overwrite, inputs)
             for name, path in (("jsonl", args.jsonl), ("rttm", args.rttm),
                                ("annotated", args.annotated), ("plot", args.plot))
             if path is not None}
    if args.save_faces is not None:
        _check_faces_dir(args.save_faces, args.overwrite)
        paths["faces"] = args.save_faces
    return paths


def _check_faces_dir(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise RtdiarError(f"--save-faces {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.glob("face*.mp4")) and not overwrite:
        raise RtdiarError(f"{folder} already holds face videos; pass --overwrite to replace them")


def _open_source(args: argparse.Namespace, config: Config, scratch: Path):
    """The file or camera; a camera's sound is recorded in `scratch` when a video output needs it."""
    from rtdiar.sources import CameraSource, FileSource

    if args.video is not None:
        pace = args.pace or ("fast" if args.no_window else "realtime")
        return FileSource(args.video, args.audio, pace, config.video, config.audio)
    wants_sound = args.annotated is not None or args.save_faces is not None
    return CameraSource(args.camera, args.mic, config.video, config.audio,
                        record_to=scratch / "microphone.wav" if wants_sound else None)


def _consume(results, sinks: list, display: queue.Queue | None) -> None:
    """Write every result to every sink; the window only ever gets the newest ones."""
    for result in results:
        for sink in sinks:
            sink.write(result)
        if display is not None:
            _offer(display, result)


def _offer(display: queue.Queue, item: object) -> None:
    """Put for display, dropping the oldest undisplayed frame rather than blocking the pipeline."""
    while True:
        try:
            display.put_nowait(item)
            return
        except queue.Full:
            try:
                display.get_nowait()
            except queue.Empty:
                pass


def _run_with_window(diarizer, source, sinks: list, config: Config, title: str) -> None:
    """Processing and sinks in a worker thread; the Qt event loop in this (main) thread."""
    from rtdiar.ui import run_window

    display: queue.Queue = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _consume(diarizer.run(source), sinks, display)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            failure.append(exc)
        finally:
            _offer(display, None)

    worker = threading.Thread(target=work, name="processing", daemon=True)
    worker.start()
    run_window(display, diarizer.stats, diarizer.stop, config.ui, title, threshold=config.decision.threshold)
    diarizer.stop()
    worker.join()
    if failure:
        raise failure[0]


def _request_stop(diarizer, windowed: bool) -> None:
    """A stop signal's work: ask the engine to end after the frame in hand, and close the window
    (its event loop returns, and the run ends as when the user closes it)."""
    diarizer.stop()
    if windowed:
        from PyQt5.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.closeAllWindows()


def run(args: argparse.Namespace) -> int:
    """The main job: one source through the engine into the window and/or the outputs."""
    from rtdiar.engine import Diarizer
    from rtdiar.outputs import open_sinks
    from rtdiar.scorers.inference import load_scorer

    _check_args(args)
    config = config_from_args(args)
    paths = _output_paths(args)
    scorer = load_scorer(config)  # before the source opens: a camera is not held while bad weights are reported
    with tempfile.TemporaryDirectory(prefix="rtdiar-") as scratch:
        source = _open_source(args, config, Path(scratch))
        sinks = open_sinks(paths, config, source)
        print(judgement_line(config.model.weights), file=sys.stderr)  # once the run can start: an error stays one line
        diarizer = Diarizer(config, scorer)
        try:
            with stop_on_signals(functools.partial(_request_stop, diarizer, windowed=not args.no_window)):
                if args.no_window:
                    _consume(diarizer.run(source), sinks, None)
                else:
                    _run_with_window(diarizer, source, sinks, config, f"rtdiar — {source.name}")
        except KeyboardInterrupt:  # Ctrl-C before the handlers were in place
            diarizer.stop()
        finally:
            source.close()  # also when the run never started; closing twice is harmless
            for sink in sinks:
                sink.close()
    stats = diarizer.stats()
    if stats["dropped"]:
        print(f"rtdiar: {stats['dropped']} frames dropped because processing fell behind", file=sys.stderr)
    return 0


def _sync_scorer(config: Config, command: str):
    """A lip-sync expert for the commands that pair faces with shifted sound; an active-speaker
    model (a whole-track logit, no sync embeddings) is one line saying where it is measured."""
    from rtdiar.scorers.inference import load_scorer

    scorer = load_scorer(config)
    if scorer.family != "sync" and getattr(scorer, "clip_windows", None) is None:
        raise RtdiarError(f"rtdiar {command} needs a lip-sync expert (rtdiar-pair, rtdiar-lips or a file of one); "
                          f"'{config.model.weights}' is an active-speaker model: `rtdiar bench` measures it")
    return scorer


def _command_parser(name: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"rtdiar {name}", description=description)


def build_offset_parser() -> argparse.ArgumentParser:
    parser = _command_parser(
        "offset", "The audio-video offset of a clip and its confidence (SyncNet's use of the model). "
                    "A positive offset means the sound comes later than the lips.")
    parser.add_argument("file", type=Path, metavar="FILE", help="video file with its sound")
    parser.add_argument("--max-shift", metavar="FRAMES", type=int,
                        help="search audio shifts of up to this many 25 fps frames either way (default: offset.max_shift)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_argument("--fix", metavar="OUT", type=Path, help="write a copy of FILE with the audio moved into sync")
    parser.add_argument("--force", action="store_true",
                        help="--fix even when the reading is unreliable (confidence below offset.min_confidence, "
                             "or on the edge of the search)")
    parser.add_argument("--overwrite", action="store_true", help="replace --fix OUT if it exists")
    add_model_arguments(parser)
    return parser


def offset(args: argparse.Namespace) -> int:
    """`rtdiar offset`: measure (and optionally repair) a clip's audio-video offset."""
    import json

    from rtdiar.offset import analyse_clip, write_fixed
    from rtdiar.outputs import check_output_path

    if args.max_shift is not None and args.max_shift < 1:
        raise RtdiarError("--max-shift must be at least 1")
    out = check_output_path(args.fix, args.overwrite, [args.file]) if args.fix is not None else None
    config = config_from_args(args)
    result = analyse_clip(args.file, config, _sync_scorer(config, "offset"), config.offset.max_shift)
    print(json.dumps(result.to_json()) if args.json else result.describe())
    if out is not None and not result.reliable and not args.force:
        raise RtdiarError(f"{args.file.name}: not fixed, the reading is unreliable: {result.doubt} "
                          "(--force writes the copy anyway)")
    if out is not None:
        write_fixed(args.file, result.offset_ms / 1000.0, out)
    return 0


def build_train_parser() -> argparse.ArgumentParser:
    parser = _command_parser(
        "train", "Train rtdiar's lip-sync expert, self-supervised, on in-sync talking-face clips.")
    parser.add_argument("--train-config", metavar="FILE", type=Path,
                        help="training recipe (default: configs/train.yaml)")
    parser.add_argument("--out", metavar="PATH.safetensors", type=Path, help="where the best weights go")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--config", metavar="FILE", type=Path, help="run-time config (detector, crop, mel) overriding configs/default.yaml")
    return parser


def train(args: argparse.Namespace) -> int:
    """`rtdiar train`: prepare the clips (cached), then train with validation on unseen people; a
    recipe with `arch: sync_head` trains the sync head on LR-ASD's front ends instead, and one with
    `arch: distilled` the compact judgement LR-ASD teaches, and one with `arch: joint` the fusion of two
    fused judgements."""
    from rtdiar.lab import distillation, joint, sync_training
    from rtdiar.lab.training import load_train_config, train_model

    arch = sync_training.read_recipe(args.train_config).get("arch") if args.train_config else None
    if arch == "sync_head":
        sync_training.train_sync_head(sync_training.load_recipe(args.train_config), args.out, args.overwrite)
    elif arch == "distilled":
        distillation.train_distilled(distillation.load_recipe(args.train_config), args.out, args.overwrite)
    elif arch == "joint":
        joint.fit_joint(joint.load_recipe(args.train_config), args.out, args.overwrite)
    else:
        train_model(load_train_config(args.train_config), load_config(args.config), out=args.out, resume=args.resume,
                    overwrite=args.overwrite)
    return 0


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = _command_parser(
        "evaluate", "The lip-sync figures on unseen people (../shared/data/dev): window AUC, clip offset, "
                    "two faces one voice, and the singer in hamilton.")
    add_report_arguments(parser, "prepared-clip cache (default: ~/.cache/rtdiar/prepared)")
    parser.add_argument("--held-out", metavar="RECIPE", type=Path,
                        help="measure a training recipe's held-out clips (its data.validation, e.g. a k-fold fold in "
                             "configs/kfold/) instead of dev/wild, with the weights it wrote (its out) unless --weights")
    parser.add_argument("--scale", metavar="F", type=float, default=1.0,
                        help="shrink every frame to F (0 < F <= 1) before detection: the same people further from "
                             "the camera, to measure small faces (single-face figures only; cached apart)")
    return parser


def add_report_arguments(parser: argparse.ArgumentParser, cache_help: str) -> None:
    """Where the dev data and the cache are, the JSON copy of the figures, and the model flags:
    shared by the commands that measure (evaluate, bench)."""
    parser.add_argument("--data", metavar="DIR", type=Path, help="dev folder (default: ../shared/data/dev beside the project)")
    parser.add_argument("--cache", metavar="DIR", type=Path, help=cache_help)
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace --json PATH if it exists")
    add_model_arguments(parser)


def evaluate(args: argparse.Namespace) -> int:
    """`rtdiar evaluate`: print the figures the model is judged by."""
    import json

    from rtdiar.lab.evaluate import evaluate_model, format_report
    from rtdiar.outputs import check_output_path

    out = check_output_path(args.json, args.overwrite, []) if args.json is not None else None
    clips = None
    if args.held_out is not None:
        from rtdiar.lab.training import load_train_config, recipe_clips

        recipe = load_train_config(args.held_out)
        clips = recipe_clips(recipe.data.validation, recipe)
        args.weights = args.weights or str(recipe.path(recipe.out))
    config = config_from_args(args)
    figures = evaluate_model(config, _sync_scorer(config, "evaluate"), data_dir=args.data, cache_dir=args.cache, clips=clips,
                             scale=args.scale)
    print(format_report(figures))
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def build_bench_parser() -> argparse.ArgumentParser:
    parser = _command_parser(
        "bench", "Benchmarks. Default: who-speaks accuracy on composite meetings of unseen people (exact truth) and on "
                 "dev/multi's real recordings, each run through `rtdiar --video ... --no-window --jsonl`.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--speed", action="store_true",
                       help="instead: per-stage time, throughput and realtime latency with 1/2/4/8 faces, per model and runtime")
    which.add_argument("--soak", action="store_true", help="instead: a long replay (configs/bench.yaml soak.minutes) "
                                                         "in realtime and in fast pace; latency, memory and drops")
    parser.add_argument("--bench-config", metavar="FILE", type=Path, help="overrides configs/bench.yaml")
    parser.add_argument("--out", metavar="DIR", type=Path, default=Path("runs/bench"),
                        help="where the accuracy runs' JSON lines go (default runs/bench; replaced on every run)")
    add_report_arguments(parser, "rendered meetings (default: ~/.cache/rtdiar/composites)")
    return parser


def bench(args: argparse.Namespace) -> int:
    """`rtdiar bench`: print the benchmark's tables (Markdown, as docs/BENCHMARKS.md quotes them)."""
    import json

    from rtdiar.lab import bench as accuracy
    from rtdiar.outputs import check_output_path

    out_json = check_output_path(args.json, args.overwrite, []) if args.json is not None else None
    cfg = accuracy.load_bench_config(args.bench_config)
    places = {"data_dir": args.data or accuracy.DEV_DATA, "cache_dir": args.cache or accuracy.COMPOSITE_CACHE}
    run_bench = _bench_speed if args.speed else _bench_soak if args.soak else _bench_accuracy
    figures = run_bench(args, cfg, places)
    if out_json is not None:
        out_json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _bench_accuracy(args: argparse.Namespace, cfg, places: dict) -> dict:
    from rtdiar.lab import bench as accuracy

    config = config_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {"meetings": accuracy.bench_meetings(cfg, config, args.out, _model_flags(args), **places),
               "recordings": accuracy.bench_recordings(config, args.out, _model_flags(args), places["data_dir"])}
    print(accuracy.format_accuracy(figures["meetings"], cfg.scoring.collar_s))
    print()
    print(accuracy.format_recordings(figures["recordings"]))
    return figures


def _model_flags(args: argparse.Namespace) -> list[str]:
    """The model settings given to `rtdiar bench`, as flags for the `rtdiar` runs it starts."""
    flags = []
    for name in ("config", "weights", "arch", "device", "runtime"):
        value = getattr(args, name, None)
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def _bench_speed(args: argparse.Namespace, cfg, places: dict) -> dict:
    from rtdiar.lab.speed import format_model, format_speed, run_speed_bench

    figures = run_speed_bench(cfg, args.config, config_from_args(args), places["cache_dir"], places["data_dir"])
    print(format_speed(figures["runs"]))
    print()
    print(format_model(figures["model_ms"]))
    return figures


def _bench_soak(args: argparse.Namespace, cfg, places: dict) -> dict:
    from rtdiar.lab.speed import format_soak, run_soak

    runs = run_soak(cfg, config_from_args(args), places["cache_dir"], places["data_dir"])
    print(format_soak(runs))
    return {"soak": runs}


def build_batch_parser() -> argparse.ArgumentParser:
    parser = _command_parser(
        "batch", "Many recordings through the same engine, as fast as possible, in parallel processes. Each gets "
                 "OUT/<name>/ (JSON lines, RTTM, what else is asked); OUT/summary.csv and OUT/all.rttm gather them. "
                 "Resumable: a finished recording is skipped, a failed one keeps its error (--retry-failed).")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="a video file, a folder (every video under it) or a .txt list (a path a line)")
    parser.add_argument("--out", metavar="DIR", type=Path, required=True, help="where the results go")
    parser.add_argument("--workers", metavar="N", type=int, help="recordings at a time (default: one per two cores)")
    parser.add_argument("--retry-failed", action="store_true", help="run the recordings that failed before again")
    parser.add_argument("--ray", metavar="ADDRESS", nargs="?", const="local",
                        help="run each recording as a task on a Ray cluster (its address, e.g. ray://head:10001), or "
                             "without an address on a local Ray (with --workers CPUs); needs pip install 'ray>=2.9'")
    for name, what in (("annotated", "the annotated video"), ("plot", "the score plot"), ("faces", "one video per face")):
        parser.add_argument(f"--{name}", action="store_true", help=f"also write {what} of each recording")
    add_model_arguments(parser)
    return parser


def batch(args: argparse.Namespace) -> int:
    """`rtdiar batch`: status 0 when every recording is done, 1 when some failed (their errors are in summary.csv)."""
    from rtdiar.batch import OUTPUTS, run_batch

    if args.workers is not None and args.workers < 1:
        raise RtdiarError("--workers must be at least 1")
    outputs = tuple(name for name in OUTPUTS if getattr(args, name))
    outcomes = run_batch(args.inputs, args.out, config_from_args(args), args.workers, outputs, args.retry_failed,
                         args.ray)
    failed = sum(outcome.status != "ok" for outcome in outcomes)
    if failed:
        print(f"rtdiar batch: {failed} of {len(outcomes)} recordings failed: see {args.out / 'summary.csv'}", file=sys.stderr)
    return 1 if failed else 0


# `rtdiar NAME ...` runs a command; anything else is the main job (`rtdiar --camera 0`).
COMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "offset": (build_offset_parser, offset),
    "train": (build_train_parser, train),
    "evaluate": (build_evaluate_parser, evaluate),
    "bench": (build_bench_parser, bench),
    "weights": (build_weights_parser, weights_command),
    "batch": (build_batch_parser, batch),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: every user-facing error is one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parse, command = build_parser, run
    if argv and argv[0] in COMMANDS:
        (parse, command), argv = COMMANDS[argv[0]], argv[1:]
    args = parse().parse_args(argv)
    try:
        return command(args)
    except RtdiarError as exc:
        print(f"rtdiar: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
