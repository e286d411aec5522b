"""The `rtdiar` command as a user runs it: outputs on a real clip, and one-line errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import soundfile

from conftest import WEIGHTS_FIXTURE, count_frames
from rtdiar.cli import main
from rtdiar.media import probe


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_file_run_writes_every_output(tmp_path, dev_clip, random_weights):
    out = {name: tmp_path / name for name in ("r.jsonl", "r.rttm", "r.mp4", "r.png")}
    code = main(["--video", str(dev_clip), "--no-window", "--weights", str(random_weights),
                 "--jsonl", str(out["r.jsonl"]), "--rttm", str(out["r.rttm"]),
                 "--annotated", str(out["r.mp4"]), "--plot", str(out["r.png"]),
                 "--save-faces", str(tmp_path / "faces"), "--threshold", "-1"])
    assert code == 0
    lines = [json.loads(line) for line in out["r.jsonl"].read_text().splitlines()]
    assert len(lines) == count_frames(dev_clip)
    assert list(lines[0]) == ["frame", "t", "faces", "speaker", "latency_ms"]
    scored = [f for line in lines for f in line["faces"] if f["score"] is not None]
    assert scored and all(-1.0 <= f["score"] <= 1.0 for f in scored)
    # threshold -1: the face speaks whenever speech is heard, so the RTTM has turns for face1
    rttm = out["r.rttm"].read_text().splitlines()
    assert rttm and all(line.split()[0] == "SPEAKER" and line.split()[7] == "face1" for line in rttm)
    video = probe(out["r.mp4"])
    assert video.has_video and video.has_audio
    assert out["r.png"].stat().st_size > 10_000
    faces = sorted(p.name for p in (tmp_path / "faces").iterdir())
    assert faces == ["face1.mp4"]


def test_realtime_file_run(tmp_path, dev_clip, random_weights):
    jsonl = tmp_path / "r.jsonl"
    assert main(["--video", str(dev_clip), "--no-window", "--pace", "realtime",
                 "--weights", str(random_weights), "--jsonl", str(jsonl)]) == 0
    frames = [json.loads(line)["frame"] for line in jsonl.read_text().splitlines()]
    assert frames and frames == sorted(set(frames))


def test_window_run_draws_and_closes_at_the_end(tmp_path, dev_clip, random_weights):
    """The Qt window (offscreen) on a file: it shows the run and closes when the file ends."""
    jsonl = tmp_path / "r.jsonl"
    assert main(["--video", str(dev_clip), "--pace", "fast", "--weights", str(random_weights),
                 "--jsonl", str(jsonl)]) == 0
    assert len(jsonl.read_text().splitlines()) == count_frames(dev_clip)


def test_missing_file(capsys, tmp_path, random_weights):
    assert main(["--video", str(tmp_path / "nope.mp4"), "--no-window", "--weights", str(random_weights)]) == 2
    assert "file not found" in _error_line(capsys)


def test_unreadable_media(capsys, tmp_path, random_weights):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    assert main(["--video", str(junk), "--no-window", "--weights", str(random_weights)]) == 2
    assert "cannot read media file" in _error_line(capsys)


def test_file_without_video(capsys, tmp_path, random_weights):
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    assert main(["--video", str(wav), "--no-window", "--weights", str(random_weights)]) == 2
    assert "has no video stream" in _error_line(capsys)


def test_file_without_audio(capsys, tmp_path, dev_clip, random_weights):
    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(dev_clip), "-an", "-c:v", "copy", str(silent)], check=True)
    assert main(["--video", str(silent), "--no-window", "--weights", str(random_weights)]) == 2
    assert "has no audio stream; pass its sound with --audio" in _error_line(capsys)


def test_separate_audio_file_is_used(tmp_path, dev_clip, random_weights):
    silent = tmp_path / "silent.mp4"
    sound = tmp_path / "sound.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(dev_clip), "-an", "-c:v", "copy", str(silent)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(dev_clip), "-vn", str(sound)], check=True)
    jsonl = tmp_path / "r.jsonl"
    assert main(["--video", str(silent), "--audio", str(sound), "--no-window",
                 "--weights", str(random_weights), "--jsonl", str(jsonl)]) == 0
    assert len(jsonl.read_text().splitlines()) == count_frames(dev_clip)


def test_missing_weights_file(capsys, tmp_path, dev_clip):
    assert main(["--video", str(dev_clip), "--no-window", "--weights", str(tmp_path / "none.safetensors")]) == 2
    err = _error_line(capsys)
    assert "no weights at" in err and "--weights" in err


def test_weights_of_the_wrong_shape(capsys, tmp_path, dev_clip):
    import torch

    shapes = json.loads(WEIGHTS_FIXTURE.read_text())
    state = {key: torch.zeros(shape) for key, shape in shapes.items()}
    state["face_encoder.0.conv_block.0.weight"] = torch.zeros(32, 3, 7, 7)  # a 3-channel (one frame) variant
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "optimizer": {}, "global_step": 0, "global_epoch": 0}, bad)
    assert main(["--video", str(dev_clip), "--no-window", "--weights", str(bad)]) == 2
    assert "face_encoder.0.conv_block.0.weight" in _error_line(capsys)


def test_existing_output_is_not_overwritten(capsys, tmp_path, dev_clip, random_weights):
    jsonl = tmp_path / "keep.jsonl"
    jsonl.write_text("precious\n")
    assert main(["--video", str(dev_clip), "--no-window", "--weights", str(random_weights), "--jsonl", str(jsonl)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert jsonl.read_text() == "precious\n"


def test_output_over_the_input_is_refused(capsys, tmp_path, dev_clip, random_weights):
    copy = tmp_path / "in.mp4"
    copy.write_bytes(dev_clip.read_bytes())
    assert main(["--video", str(copy), "--no-window", "--weights", str(random_weights),
                 "--annotated", str(copy), "--overwrite"]) == 2
    _error_line(capsys)
    assert copy.read_bytes() == dev_clip.read_bytes()


def test_camera_that_will_not_open(capsys, random_weights):
    assert main(["--camera", "9", "--no-window", "--weights", str(random_weights)]) == 2
    assert "cannot open camera 9" in _error_line(capsys)


def test_bad_flag_values(capsys, dev_clip):
    assert main(["--video", str(dev_clip), "--no-window", "--stride", "0"]) == 2
    assert "--stride" in _error_line(capsys)
    assert main(["--video", str(dev_clip), "--no-window", "--detect-every", "0"]) == 2
    assert "--detect-every must be at least 1" in _error_line(capsys)


def test_help_explains_every_option():
    proc = subprocess.run([sys.executable, "-m", "rtdiar", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--camera", "--mic", "--video", "--audio", "--pace", "--no-window", "--jsonl", "--rttm",
                 "--annotated", "--plot", "--save-faces", "--config", "--weights", "--device", "--stride", "--detect-every"):
        assert flag in proc.stdout


def test_errors_reach_the_shell_as_one_line_and_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rtdiar", "--video", str(tmp_path / "x.mp4"), "--no-window"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("rtdiar: error:") and len(proc.stderr.strip().splitlines()) == 1


def test_window_without_a_display(capsys, monkeypatch, dev_clip, random_weights):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--video", str(dev_clip), "--weights", str(random_weights)]) == 2
    assert "--no-window" in _error_line(capsys)
