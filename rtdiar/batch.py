"""`rtdiar batch`: an archive of recordings through the same engine, in parallel, resumable.

Each recording runs as `rtdiar --video FILE --no-window` would (the same `Diarizer`, as fast as
possible) in one of `workers` processes, and its outputs go to `OUT/<name>/`: written in a hidden
folder beside it and renamed into place when complete, so a stop or a crash never leaves half an
output under the final name. Each folder holds `outcome.json` (the recording's row of the summary);
a finished recording is skipped on the next run, a failed one keeps its one-line error and is tried
again with `--retry-failed`. `OUT/summary.csv` and `OUT/all.rttm` (every recording's turns) are
rewritten from the folders after each recording.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from rtdiar.config import Config
from rtdiar.errors import RtdiarError
from rtdiar.media import VIDEO_SUFFIXES
from rtdiar.scorers.registry import judgement_line
from rtdiar.signals import stop_on_signals

OUTCOME = "outcome.json"
OUTPUTS = ("annotated", "plot", "faces")  # asked for by flag; JSON lines and RTTM are always written
LOCAL_RAY = "local"  # `--ray` without an address: a Ray instance on this machine
RAY_RETRIES = 2


@dataclass(frozen=True)
class Recording:
    path: Path
    name: str  # its folder under OUT: the file's stem, made unique when two inputs share one


@dataclass
class Outcome:
    """One recording's row of summary.csv."""

    file: str
    duration_s: float | None
    faces: int | None
    speakers: int | None
    speech_s: float | None
    processing_s: float
    status: str  # "ok", or "failed: " and the one-line error


def find_recordings(inputs: Sequence[Path]) -> list[Recording]:
    """Files, folders (every video under them) and text lists (a path a line, relative to the list;
    blank and `#` lines skipped), in the order given, each once; a missing input is one error line."""
    paths: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            paths += sorted(p for p in entry.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        elif entry.suffix.lower() == ".txt" and entry.is_file():
            lines = [line.strip() for line in entry.read_text(encoding="utf-8").splitlines()]
            paths += [entry.parent / line for line in lines if line and not line.startswith("#")]
        elif entry.is_file():
            paths.append(entry)
        else:
            raise RtdiarError(f"no such file or folder: {entry}")
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    stems = [path.stem for path in unique]
    return [Recording(path, stem if stems.count(stem) == 1 else f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}")
            for path, stem in zip(unique, stems)]


def default_workers(config: Config) -> int:
    """One run per two cores: detection takes one, the scorer's threads the other."""
    threads = max(1, config.asd.threads)
    return max(1, (os.cpu_count() or 1) // (1 + threads))


def read_outcome(folder: Path) -> Outcome | None:
    try:
        return Outcome(**json.loads((folder / OUTCOME).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def process_recording(recording: Recording, out_dir: Path, outputs: tuple[str, ...], config: Config) -> Outcome:
    """Run one recording into `out_dir/<name>/`, atomically; a user-facing error is its outcome, not a raise."""
    final, partial = out_dir / recording.name, out_dir / f".{recording.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    try:
        outcome = _diarize(recording, partial, outputs, config, started)
    except Exception as exc:  # noqa: BLE001 - any failure is this recording's, recorded in one line; the rest go on
        shutil.rmtree(partial)
        partial.mkdir()
        outcome = Outcome(str(recording.path), None, None, None, None, round(time.monotonic() - started, 3),
                          f"failed: {_one_line(exc)}")
    (partial / OUTCOME).write_text(json.dumps(asdict(outcome)), encoding="utf-8")
    _into_place(partial, final)
    return outcome


def _into_place(partial: Path, final: Path) -> None:
    """A recording's complete folder under its final name (replacing a failed earlier try's)."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)


def _diarize(recording: Recording, folder: Path, outputs: tuple[str, ...], config: Config, started: float) -> Outcome:
    from rtdiar.engine import Diarizer
    from rtdiar.outputs import open_sinks
    from rtdiar.scorers.inference import load_scorer
    from rtdiar.sources import FileSource

    paths = {"jsonl": folder / f"{recording.name}.jsonl", "rttm": folder / f"{recording.name}.rttm"}
    paths.update({name: folder / {"annotated": f"{recording.name}.mp4", "plot": f"{recording.name}.png",
                                  "faces": "faces"}[name] for name in outputs})
    source = FileSource(recording.path, None, "fast", config.video, config.audio)
    sinks = open_sinks(paths, config, source, recording.name)
    faces, speakers, speaking, last_t = set(), set(), 0, 0.0
    try:
        for result in Diarizer(config, load_scorer(config)).run(source):
            for sink in sinks:
                sink.write(result)
            faces.update(face.id for face in result.faces)
            if result.speaker is not None:
                speakers.add(result.speaker)
                speaking += 1
            last_t = result.t
    finally:
        source.close()
        for sink in sinks:
            sink.close()
    fps = source.fps or config.video.fallback_fps
    return Outcome(str(recording.path), round(last_t + 1 / fps, 3), len(faces), len(speakers), round(speaking / fps, 3),
                   round(time.monotonic() - started, 3), "ok")


def write_summary(out_dir: Path, recordings: Sequence[Recording]) -> list[Outcome]:
    """summary.csv and all.rttm from the recordings' folders (those done so far), each written atomically."""
    done = [(recording, outcome) for recording in recordings
            if (outcome := read_outcome(out_dir / recording.name)) is not None]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(Outcome.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(asdict(outcome) for _, outcome in done)
    rttm = "".join((out_dir / r.name / f"{r.name}.rttm").read_text(encoding="utf-8")
                   for r, outcome in done if outcome.status == "ok")
    for name, text in (("summary.csv", table.getvalue()), ("all.rttm", rttm)):
        temp = out_dir / f".{name}.partial"
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, out_dir / name)
    return [outcome for _, outcome in done]


def run_batch(inputs: Sequence[Path], out_dir: Path, config: Config, workers: int | None = None,
              outputs: tuple[str, ...] = (), retry_failed: bool = False, ray_address: str | None = None) -> list[Outcome]:
    """Every recording not finished yet (and the failed ones when `retry_failed`), `workers` at a
    time in local processes, or as Ray tasks (`ray_address`: a cluster's, or "local"). A stop signal
    starts no more: local processes finish the recordings they hold, Ray tasks are cancelled."""
    recordings = find_recordings(inputs)
    if not recordings:
        raise RtdiarError("no recordings found in the inputs")
    print(judgement_line(config.model.weights), file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in recordings if _needs_run(read_outcome(out_dir / r.name), retry_failed)]
    stop = threading.Event()

    def finished(recording: Recording) -> None:
        bar.update()
        write_summary(out_dir, recordings)

    with stop_on_signals(stop.set), tqdm(total=len(todo), desc="recordings", unit="rec") as bar:
        if ray_address is None:
            _run_local(todo, out_dir, outputs, config, workers or default_workers(config), stop, finished)
        else:
            _run_on_ray(todo, out_dir, outputs, config, ray_address, workers, stop, finished)
    return write_summary(out_dir, recordings)


def _run_local(todo: list[Recording], out_dir: Path, outputs: tuple[str, ...], config: Config, workers: int,
               stop: threading.Event, finished: Callable[[Recording], None]) -> None:
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_ignore_terminal_signals) as pool:
        pending, running = list(todo), {}
        while pending or running:
            while pending and not stop.is_set() and len(running) < workers:
                recording = pending.pop(0)
                running[pool.submit(process_recording, recording, out_dir, outputs, config)] = recording
            if not running:
                return
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
                finished(running.pop(future))


def ray_task(recording: Recording, outputs: tuple[str, ...], config: Config) -> tuple[Outcome, dict[str, bytes]]:
    """One recording on whichever Ray node runs it, in a scratch folder; its files come back by value,
    so a cluster needs no shared output folder (only the recordings must be readable there)."""
    with tempfile.TemporaryDirectory(prefix="rtdiar-batch-") as scratch:
        outcome = process_recording(recording, Path(scratch), outputs, config)
        folder = Path(scratch) / recording.name
        return outcome, {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _store(out_dir: Path, name: str, files: dict[str, bytes]) -> None:
    """A Ray task's files into `out_dir/<name>/`, written aside and renamed into place."""
    partial = out_dir / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for relative, data in files.items():
        (partial / relative).parent.mkdir(parents=True, exist_ok=True)
        (partial / relative).write_bytes(data)
    _into_place(partial, out_dir / name)


def _run_on_ray(todo: list[Recording], out_dir: Path, outputs: tuple[str, ...], config: Config, address: str,
                workers: int | None, stop: threading.Event, finished: Callable[[Recording], None]) -> None:
    """One Ray task per recording, declaring the CPUs a run keeps busy and a GPU when the model runs
    on CUDA; a task whose worker dies is run again (`RAY_RETRIES`)."""
    try:
        import ray
    except ModuleNotFoundError:
        raise RtdiarError("--ray needs Ray: pip install 'ray>=2.9' (or the project's [ray] extra)") from None
    local = address == LOCAL_RAY
    ray.init(address=None if local else address, num_cpus=(workers or os.cpu_count()) if local else None,
             include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        task = ray.remote(num_cpus=1, num_gpus=1 if config.model.device == "cuda" else 0,
                          max_retries=RAY_RETRIES)(ray_task)
        running = {task.remote(recording, outputs, config): recording for recording in todo}
        cancelled = False
        while running:
            if stop.is_set() and not cancelled:
                for ref in running:
                    ray.cancel(ref)  # a running one is interrupted: it wrote nothing, so the next run does it
                cancelled = True
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in done:
                recording = running.pop(ref)
                try:
                    outcome, files = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    continue
                except ray.exceptions.RayError as exc:  # its worker died on every try
                    outcome = Outcome(str(recording.path), None, None, None, None, 0.0, f"failed: {_one_line(exc)}")
                    files = {OUTCOME: json.dumps(asdict(outcome)).encode()}
                _store(out_dir, recording.name, files)
                finished(recording)
    finally:
        ray.shutdown()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, RtdiarError) else f"{type(exc).__name__}: {text}"


def _ignore_terminal_signals() -> None:
    """In each worker: a terminal's Ctrl-C or hang-up reaches the whole process group; only the
    batch decides to stop, and lets the running recordings finish."""
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)


def _needs_run(outcome: Outcome | None, retry_failed: bool) -> bool:
    return outcome is None or (outcome.status != "ok" and retry_failed)
