"""The speed and soak benchmarks, on tiny settings: they run the real engine and report every stage.
No timing is asserted (shared machines flake); what is checked is what a reader of the tables relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtdiar.cli import main
from rtdiar.config import load_config
from rtdiar.engine import Diarizer
from rtdiar.scorers.inference import load_scorer
from rtdiar.sources import FileSource
from rtdiar.lab.speed import Variant, parse_variants

STAGES = {"decode", "detect", "track", "crop", "mel", "vad", "model", "decision"}


@pytest.mark.parametrize("weights, extra", [("weights/rtdiar_syncnet.safetensors", set()),
                                            ("weights/rtdiar_syncnet_lips.safetensors", {"lips"})])
def test_the_engine_times_every_stage_of_a_run(dev_clip: Path, weights, extra):
    """The lips model adds FaceMesh's stage; the default pixel pair does not run it."""
    config = load_config(overrides={"model.weights": weights})
    source = FileSource(dev_clip, None, "fast", config.video, config.audio)
    diarizer = Diarizer(config, load_scorer(config))
    frames = sum(1 for _ in diarizer.run(source))
    per_frame = diarizer.times.per_frame_ms(frames)
    assert set(per_frame) == STAGES | extra
    assert all(ms > 0 for ms in per_frame.values())


def test_variants_are_read_as_arch_runtime_device():
    assert parse_variants(["compact/onnx", "wav2lip/torch/cpu"])[:2] == [
        Variant("compact", "onnx"), Variant("wav2lip", "torch", "cpu")]


def write_tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("speed: {faces: [2], duration_s: 3.0, tile_px: 192, variants: [compact/onnx, wav2lip/torch],"
                    " model_faces: [1, 3]}\nsoak: {minutes: 0.1, faces: 2}\n")
    return path


def test_speed_bench_reports_each_variant_with_its_stages(shared_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", "--speed", "--bench-config", str(write_tiny(tmp_path)), "--cache", str(tmp_path / "cache"),
                 "--data", str(shared_dir / "data" / "dev"), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    runs = {run["variant"]: run for run in figures["runs"]}
    assert set(runs) == {"compact / onnx / cpu", "wav2lip / torch / cpu"}  # wav2lip ran on random weights
    for run in runs.values():
        assert run["faces"] == 2 and run["fast"]["dropped"] == 0
        assert set(run["fast"]["stages_ms"]) == STAGES | {"drawing"}
        assert 1.0 < run["fast"]["scored_faces_per_frame"] <= 2.0  # both people found
        assert run["realtime"]["processed"] + run["realtime"]["dropped"] == run["realtime"]["frames"] == 75
        assert run["realtime"]["latency_p50_ms"] <= run["realtime"]["latency_p95_ms"]
    assert set(figures["model_ms"]["compact / onnx / cpu"]) == {"1", "3"}
    printed = capsys.readouterr().out
    assert "| compact / onnx / cpu | 2 |" in printed and "detect" in printed


def test_soak_runs_realtime_then_fast_without_dropping_in_fast(shared_dir: Path, tmp_path: Path):
    out = tmp_path / "soak.json"
    assert main(["bench", "--soak", "--bench-config", str(write_tiny(tmp_path)), "--cache", str(tmp_path / "cache"),
                 "--data", str(shared_dir / "data" / "dev"), "--json", str(out)]) == 0
    realtime, fast = json.loads(out.read_text())["soak"]
    assert (realtime["pace"], fast["pace"]) == ("realtime", "fast")
    assert fast["dropped"] == 0 and fast["processed"] == 150
    assert fast["memory_mb_end"] == pytest.approx(fast["memory_mb_start"], rel=0.5)
