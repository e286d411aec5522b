"""Output files as a user checks them: JSON lines, RTTM, the annotated video, the plot, face videos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import cv2
import matplotlib.image
import numpy as np
import pytest
from scipy.io import wavfile

from rtdiar.config import load_config
from rtdiar.drawing import track_colour_rgb
from rtdiar.errors import RtdiarError
from rtdiar.media import decode_audio, probe
from rtdiar.outputs import (AnnotatedVideoSink, FaceCropSink, JsonlSink, PlotSink, RttmSink,
                            check_output_path)
from rtdiar.types import FaceResult, FrameResult

FPS = 25.0
SAMPLE_RATE = 16000
TONE_START_S = 0.4


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    """2 s of silence, then from TONE_START_S a 440 Hz tone: its onset shows where the audio was placed."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    wave = np.where(t >= TONE_START_S, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0)
    path = tmp_path / "tone.wav"
    wavfile.write(path, SAMPLE_RATE, (wave * 32767).astype(np.int16))
    return path


def scripted(speakers: list[int | None], size: tuple[int, int] | None = None) -> list[FrameResult]:
    """Frames at 25 fps with faces 1 and 2; `speakers[i]` speaks in frame i (face 2 unscored at first)."""
    results = []
    for i, speaker in enumerate(speakers):
        faces = [FaceResult(1, (30.0, 40.0, 110.0, 150.0), score=0.2 + 0.02 * i, speaking=speaker == 1),
                 FaceResult(2, (150.0, 50.0, 220.0, 140.0), score=None if i < 5 else 0.7, speaking=speaker == 2)]
        image = None
        if size is not None:
            image = np.full((size[1], size[0], 3), 100, dtype=np.uint8)
            image[:, :, i % 3] = 40 + 5 * i  # frames differ, as in a real video
        results.append(FrameResult(frame=i, t=i / FPS, faces=faces, speaker=speaker, latency_ms=12.345, image=image))
    return results


def ffprobe_video(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames,width,height", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"][0]


def tone_onset_s(path: Path) -> float:
    audio = decode_audio(path, SAMPLE_RATE)
    return np.argmax(np.abs(audio) > 0.2) / SAMPLE_RATE


def test_jsonl_lines_are_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    results = scripted([1] * 3 + [None] * 4)
    for result in results:
        sink.write(result)
    assert len(path.read_text().splitlines()) == len(results), "flushed as it goes, before close"
    sink.close()
    sink.close()
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["frame", "t", "faces", "speaker", "latency_ms"]
    assert [list(face) for face in first["faces"]] == [["id", "box", "score", "speaking"]] * 2
    assert first["faces"][1]["score"] is None and '"score": null' in lines[0]
    assert first["speaker"] == 1 and first["faces"][0]["speaking"] is True
    assert [json.loads(line)["speaker"] for line in lines] == [1] * 3 + [None] * 4


def test_rttm_has_one_line_per_speaking_turn(tmp_path: Path) -> None:
    path = tmp_path / "out.rttm"
    sink = RttmSink(path, "my clip")
    for result in scripted([1] * 10 + [None] * 5 + [2] * 10):
        sink.write(result)
    sink.close()
    sink.close()
    rows = [line.split() for line in path.read_text().splitlines()]
    assert len(rows) == 2
    for row, (start_s, duration_s, label) in zip(rows, [(0.0, 0.4, "face1"), (0.6, 0.4, "face2")]):
        assert len(row) == 10 and row[0] == "SPEAKER" and row[1] == "my_clip" and row[7] == label
        assert float(row[3]) == pytest.approx(start_s, abs=1e-3)
        assert float(row[4]) == pytest.approx(duration_s, abs=1e-3)


def test_check_output_path(tmp_path: Path) -> None:
    existing = tmp_path / "out.jsonl"
    existing.write_text("keep me")
    with pytest.raises(RtdiarError, match="exists; pass --overwrite"):
        check_output_path(existing, overwrite=False, inputs=[])
    assert check_output_path(existing, overwrite=True, inputs=[]) == existing
    assert check_output_path(tmp_path / "new.rttm", overwrite=False, inputs=[]) == tmp_path / "new.rttm"
    video = tmp_path / "in.mp4"
    video.write_bytes(b"")
    other_spelling = tmp_path / "sub" / ".." / "in.mp4"
    (tmp_path / "sub").mkdir()
    with pytest.raises(RtdiarError, match="input"):
        check_output_path(other_spelling, overwrite=True, inputs=[video])
    with pytest.raises(RtdiarError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.mp4", overwrite=False, inputs=[])
    assert existing.read_text() == "keep me"


def test_annotated_video_has_frames_audio_and_the_green_speaker(tmp_path: Path, tone_wav: Path) -> None:
    path = tmp_path / "annotated.mp4"
    sink = AnnotatedVideoSink(path, FPS, tone_wav)
    for result in scripted([1] * 30, size=(241, 181)):  # odd size: padded to even for yuv420p
        sink.write(result)
    sink.close()
    sink.close()
    info = probe(path)
    assert info.has_video and info.has_audio
    stream = ffprobe_video(path)
    assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (30, 242, 182)
    assert info.duration_s == pytest.approx(30 / FPS, abs=0.1), "-shortest: the video decides the length"
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    blue, green, red = (int(v) for v in frame[95, 30])  # left edge of face 1's box
    assert ok and green > 180 and red < 90 and blue < 90
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4", "tone.wav"], "no temp files left"


@pytest.mark.parametrize("audio_offset_s, onset_s", [(0.0, TONE_START_S), (0.3, TONE_START_S - 0.3),
                                                     (-0.3, TONE_START_S + 0.3)])
def test_annotated_video_audio_offset(tmp_path: Path, tone_wav: Path, audio_offset_s: float, onset_s: float) -> None:
    """audio_offset_s > 0 skips the start of the audio, < 0 delays it."""
    path = tmp_path / "annotated.mp4"
    sink = AnnotatedVideoSink(path, FPS, tone_wav, audio_offset_s=audio_offset_s)
    for result in scripted([None] * 25, size=(64, 48)):
        sink.write(result)
    sink.close()
    assert tone_onset_s(path) == pytest.approx(onset_s, abs=0.03)


def test_failed_ffmpeg_leaves_no_file(tmp_path: Path, tone_wav: Path) -> None:
    path = tmp_path / "annotated.notavideoformat"
    sink = AnnotatedVideoSink(path, FPS, tone_wav)
    with pytest.raises(RtdiarError, match="ffmpeg could not write"):
        for result in scripted([1] * 10, size=(320, 240)):
            sink.write(result)
        sink.close()
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.wav"]


def test_bad_audio_is_refused_before_writing(tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not a sound file")
    with pytest.raises(RtdiarError, match="notes.wav"):
        AnnotatedVideoSink(tmp_path / "annotated.mp4", FPS, not_audio)
    assert not (tmp_path / "annotated.mp4").exists()


def test_missing_ffmpeg_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = AnnotatedVideoSink(tmp_path / "annotated.mp4", FPS, None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RtdiarError, match="ffmpeg"):
        sink.write(scripted([1], size=(64, 48))[0])
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_plot_is_a_png_with_a_curve_per_face(tmp_path: Path) -> None:
    path = tmp_path / "scores.png"
    sink = PlotSink(path, threshold=0.5)
    for result in scripted([None] * 10 + [2] * 30 + [1] * 10):
        sink.write(result)
    sink.close()
    sink.close()
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (400, 1000)
    rgb = np.round(image[..., :3] * 255)
    for track_id in (1, 2):
        assert np.all(np.abs(rgb - track_colour_rgb(track_id)) <= 2, axis=-1).sum() > 50, f"face{track_id} curve"


def test_face_videos_one_per_track_with_audio(tmp_path: Path, tone_wav: Path) -> None:
    folder = tmp_path / "faces"
    sink = FaceCropSink(folder, FPS, load_config().tracker, tone_wav)
    results = scripted([None] * 30, size=(240, 180))
    for i, result in enumerate(results):
        result.faces = [f for f in result.faces if (f.id == 1 and i < 20) or (f.id == 2 and i >= 5)]
        sink.write(result)
    assert (folder / "face1.mp4").exists(), "an ended track's video is finished without waiting for close"
    sink.close()
    sink.close()
    assert sorted(p.name for p in folder.iterdir()) == ["face1.mp4", "face2.mp4"]
    for name, frames in (("face1.mp4", 20), ("face2.mp4", 25)):
        info = probe(folder / name)
        assert info.has_video and info.has_audio
        stream = ffprobe_video(folder / name)
        assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (frames, 224, 224)
    # face 2 appears at 0.2 s: its audio starts there, so the tone (at 0.4 s) comes 0.2 s into its video
    assert tone_onset_s(folder / "face2.mp4") == pytest.approx(TONE_START_S - 5 / FPS, abs=0.03)


def test_dropped_frames_are_filled_to_keep_sync(tmp_path: Path) -> None:
    path = tmp_path / "annotated.mp4"
    sink = AnnotatedVideoSink(path, FPS, None)
    for result in scripted([1] * 30, size=(64, 48))[::3]:  # a live run that kept every third frame
        sink.write(result)
    sink.close()
    assert int(ffprobe_video(path)["nb_read_frames"]) == 28  # frames 0..27 at 25 fps
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


def test_signals_during_the_run_lose_no_frame(tmp_path: Path) -> None:
    """A signal (the stop request, a terminal resize) that lands while a frame is being piped to
    ffmpeg interrupts the write part-way; the rest of that frame must still be sent."""
    path = tmp_path / "annotated.mp4"
    sink = AnnotatedVideoSink(path, FPS, None)
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)  # a signal every millisecond
    try:
        for result in scripted([1] * 40, size=(640, 480)):  # 0.9 MB a frame: more than a pipe holds
            sink.write(result)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    sink.close()
    assert int(ffprobe_video(path)["nb_read_frames"]) == 40
