"""The weights that ship: a fresh install scores with them, with no flag and no download."""

from __future__ import annotations

import json
import subprocess

import pytest

from rtdiar.cli import main
from rtdiar.config import load_config
from rtdiar.scorers.inference import load_scorer


def test_the_default_config_loads_the_shipped_model():
    scorer = load_scorer(load_config())
    assert scorer.model.arch == "compact_pair" and not scorer.needs_lips  # pixels only: FaceMesh is not run


def test_the_more_accurate_shipped_model_reads_pixels_and_lip_points():
    scorer = load_scorer(load_config(overrides={"model.weights": "weights/rtdiar_syncnet_lips.safetensors"}))
    assert scorer.model.arch == "compact_lips" and scorer.needs_lips


@pytest.fixture(scope="module")
def studio_clip(shared_dir):
    """A GRID clip of a speaker the model never saw (frontal, studio light: the easy case)."""
    return shared_dir / "data" / "dev" / "wild" / "grid_sbia1a.mpg"


@pytest.mark.parametrize("weights", ["weights/rtdiar_syncnet.safetensors", "weights/rtdiar_syncnet_lips.safetensors"])
@pytest.mark.parametrize("delay_ms", [0, 200])
def test_the_shipped_model_measures_a_known_audio_delay(studio_clip, tmp_path, capsys, delay_ms, weights):
    clip = tmp_path / "delayed.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(studio_clip), "-c:v", "copy",
                    "-af", f"adelay=delays={delay_ms}:all=1", "-c:a", "flac", str(clip)], check=True)
    assert main(["offset", str(clip), "--json", "--weights", weights]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["offset_ms"] - delay_ms) <= 40  # within one 25 fps frame
    assert result["reliable"]


def test_the_shipped_model_does_not_vouch_for_lips_under_noise(studio_clip, tmp_path, capsys):
    """The clip's sound replaced by noise: whatever shift reads highest, the reading is called unreliable."""
    clip = tmp_path / "noise.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(studio_clip), "-f", "lavfi", "-i", "anoisesrc=duration=3:seed=1",
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "flac", "-shortest", str(clip)], check=True)
    assert main(["offset", str(clip), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not result["reliable"] and result["doubt"]
