"""The benchmark's scorer: figures a user would check by hand on small made-up meetings, and one
real run of the command line on a rendered meeting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from rtdiar.lab import bench
from rtdiar.lab.composite import Truth, Turn
from rtdiar.outputs import JsonlSink
from rtdiar.types import FaceResult, FrameResult

FPS = 25.0
TILES = [(0, 0, 100, 100), (100, 0, 200, 100)]
BOXES = {0: (20.0, 20.0, 80.0, 80.0), 1: (120.0, 20.0, 180.0, 80.0)}  # face id -> box; id 0 in tile 0, id 1 in tile 1


def make_truth(turns: list[Turn], frames: int, unvoiced: set[int] = frozenset()) -> Truth:
    """Person p speaks on every frame of its turns, except the frames listed as unvoiced."""
    speaker = []
    for k in range(frames):
        turn = next(t for t in turns if t.start_s <= k / FPS < t.end_s)
        speaker.append(None if k in unvoiced else turn.person)
    return Truth("m", Path("m.mp4"), FPS, frames, 200, 100, TILES, ["a.mp4", "b.mp4"], turns, speaker)


def results_for(speakers: list[int | None]) -> list[FrameResult]:
    """Frame results with both faces present and the given chosen speaker per frame."""
    return [FrameResult(k, k / FPS, [FaceResult(i, box, 0.5, i == s) for i, box in BOXES.items()], s, 10.0)
            for k, s in enumerate(speakers)]


TURNS = [Turn(0, 0.0, 2.0), Turn(None, 2.0, 3.0), Turn(1, 3.0, 5.0)]  # A 2 s, a 1 s pause, B 2 s
FRAMES = 125


def figures_for(predicted: list[int | None], collar_s: float = 0.5) -> dict:
    tally = bench.Tally()
    tally.add_meeting(make_truth(TURNS, FRAMES), predicted, collar_s)
    return tally.figures()


def test_a_perfect_engine_scores_perfectly():
    truth = make_truth(TURNS, FRAMES)
    figures = figures_for(list(truth.speaker))
    assert figures["speech_frames"] == 100 and figures["silent_frames"] == 25
    assert figures["accuracy"] == 1.0 and figures["accuracy_outside_collar"] == 1.0
    assert figures["false_alarm"] == 0.0 and figures["missed"] == 0.0
    assert figures["switches"] == 2 and figures["switch_median_s"] == 0.0 and figures["switch_never"] == 0.0


def test_an_engine_that_never_picks_anyone_misses_all_speech():
    figures = figures_for([None] * FRAMES)
    assert figures["accuracy"] == 0.0 and figures["missed"] == 1.0 and figures["false_alarm"] == 0.0
    assert figures["switch_never"] == 1.0 and figures["switch_median_s"] is None


def test_a_late_switch_is_measured_and_only_the_collar_forgives_it():
    truth = make_truth(TURNS, FRAMES)
    late = list(truth.speaker)
    late[75:85] = [0] * 10  # B's turn starts at frame 75; the engine keeps A for 10 frames (0.4 s)
    assert bench.switch_delays(truth, np.array([-1 if p is None else p for p in late])) == [0.0, pytest.approx(10 / FPS)]
    figures = figures_for(late)
    assert figures["accuracy"] == pytest.approx(90 / 100)
    assert figures["accuracy_outside_collar"] == 1.0  # the 10 wrong frames lie in the 0.5 s after the change
    assert figures_for(late, collar_s=0.2)["accuracy_outside_collar"] < 1.0


def test_picking_someone_in_a_pause_is_a_false_alarm():
    truth = make_truth(TURNS, FRAMES)
    chatty = [0 if s is None else s for s in truth.speaker]
    assert figures_for(chatty)["false_alarm"] == 1.0


def test_switch_time_counts_from_the_first_voiced_frame_of_the_turn():
    truth = make_truth(TURNS, FRAMES, unvoiced=set(range(75, 80)))  # B draws breath for 0.2 s
    tally = bench.Tally()
    tally.add_meeting(truth, [None] * 80 + [1] * 45, 0.5)
    assert tally.figures()["switch_median_s"] == 0.0


def test_the_speakers_box_is_mapped_to_its_tile():
    speakers = [None, 0, 1, 1]
    assert bench.predicted_tiles(results_for(speakers), TILES, 5) == [None, 0, 1, 1, None]  # frame 4 dropped


def test_faces_found_counts_each_person_on_each_frame():
    results = results_for([None, 0, 1])
    results[2].faces = results[2].faces[:1]  # person 1 lost on the last frame
    assert bench.faces_found(results, TILES, 4) == pytest.approx(5 / 8)  # frame 3 missing altogether


def test_json_lines_written_by_the_engine_read_back(tmp_path: Path):
    results = results_for([None, 1, 0])
    sink = JsonlSink(tmp_path / "x.jsonl")
    for result in results:
        sink.write(result)
    sink.close()
    back = bench.read_results(tmp_path / "x.jsonl")
    assert [r.speaker for r in back] == [None, 1, 0]
    assert [face.box for face in back[1].faces] == [BOXES[0], BOXES[1]]


def test_der_is_zero_for_a_perfect_engine_whatever_its_ids_and_one_for_a_silent_one():
    from pyannote.core import Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    truth = make_truth(TURNS, FRAMES)
    reference = bench.annotation([None if s is None else f"person{s}" for s in truth.speaker], FPS, "m")
    perfect = bench.annotation(bench.hypothesis_labels(results_for(list(truth.speaker)), FRAMES), FPS, "m")
    silent = bench.annotation([None] * FRAMES, FPS, "m")
    uem = Segment(0, FRAMES / FPS)
    assert DiarizationErrorRate()(reference, perfect, uem=uem) == pytest.approx(0.0)
    assert DiarizationErrorRate()(reference, silent, uem=uem) == pytest.approx(1.0)


def test_bench_config_has_the_issue_settings():
    cfg = bench.load_bench_config()
    assert sorted(cfg.composites.people) == [2, 3, 4]
    assert cfg.composites.turn_s == [1.0, 4.0] and cfg.scoring.collar_s == 0.5
    assert 20.0 <= cfg.composites.duration_s[0] <= cfg.composites.duration_s[1] <= 60.0


def test_a_rendered_meeting_runs_through_the_command_line_and_is_scored(shared_dir: Path, config, tmp_path: Path):
    """One small 2-person meeting: the real `rtdiar --jsonl` run, then every frame scored."""
    cfg = bench.load_bench_config()
    cfg = dataclasses.replace(cfg, composites=dataclasses.replace(
        cfg.composites, people=[2], per_size=1, duration_s=[8.0, 8.0], tile_px=192))
    figures = bench.bench_meetings(cfg, config, tmp_path, [], cache_dir=tmp_path / "cache",
                                   data_dir=shared_dir / "data" / "dev")
    (row,) = figures["meetings"]
    truth = Truth.from_json(json.loads(next((tmp_path / "cache").glob("*.truth.json")).read_text()))
    lines = bench.read_results(tmp_path / f"{truth.name}.jsonl")
    assert [r.frame for r in lines] == list(range(truth.frames))  # fast pace: no frame dropped
    assert all(len(r.faces) == 2 for r in lines[10:])  # both people found and tracked
    assert row["speech_frames"] == sum(s is not None for s in truth.speaker) > 0
    assert row["faces_found"] > 0.8
    summary = figures["summary"]["all"]
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["der"]
    assert summary["accuracy"] + summary["missed"] <= 1.0 + 1e-9
