"""Composite meetings: seeded plans, and a rendered meeting whose sound is each person's own, in sync."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.signal import correlate

from conftest import count_frames
from rtdiar.lab.composite import (CompositeConfig, MeetingPlan, Truth, composite_config, plan_meetings, render_meeting,
                              tile_of, voiced_frames)
from rtdiar.config import PROJECT_ROOT, load_config, read_yaml
from rtdiar.errors import RtdiarError
from rtdiar.media import decode_audio, probe
from rtdiar.sources import FileSource

RATE = 16000
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


@pytest.fixture(scope="module")
def bench_cfg() -> CompositeConfig:
    """The shipped settings with small tiles, so renders stay quick."""
    cfg = composite_config(read_yaml(PROJECT_ROOT / "configs" / "bench.yaml")["composites"])
    return dataclasses.replace(cfg, tile_px=128)


@pytest.fixture(scope="module")
def wild_clips(shared_dir: Path) -> list[Path]:
    return sorted((shared_dir / "data" / "dev" / "wild").iterdir())


def test_plans_are_fixed_by_the_seed_whatever_the_clips_order(wild_clips, bench_cfg):
    plans = plan_meetings(wild_clips, 3, 4, bench_cfg, seed=0)
    assert plan_meetings(wild_clips[::-1], 3, 4, bench_cfg, seed=0) == plans
    other = plan_meetings(wild_clips, 3, 4, bench_cfg, seed=1)
    assert [p.turns for p in other] != [p.turns for p in plans]
    assert [p.clips for p in other] != [p.clips for p in plans]
    assert len({p.name for p in plans}) == 4


@pytest.mark.parametrize("people", [1, 2, 3, 4])
def test_turns_tile_the_meeting_one_person_at_a_time_with_some_pauses(wild_clips, bench_cfg, people):
    plans = plan_meetings(wild_clips, people, 12, bench_cfg, seed=7)
    low_s, high_s = bench_cfg.duration_s
    pauses = 0
    for plan in plans:
        assert low_s - 0.02 <= plan.duration_s <= high_s + 0.02
        assert len(set(plan.clips)) == people and len(plan.clip_start_frames) == people
        assert all(start >= 0 for start in plan.clip_start_frames)
        turns = plan.turns
        assert turns[0].start_s == 0.0 and turns[-1].end_s == plan.duration_s and turns[0].person is not None
        for before, after in zip(turns, turns[1:]):
            assert before.end_s == after.start_s
            assert before.person is not None or after.person is not None  # never two pauses in a row
        for turn in turns[:-1]:  # the last one is cut at the end of the meeting
            low, high = bench_cfg.gap_s if turn.person is None else bench_cfg.turn_s
            assert low <= turn.end_s - turn.start_s <= high + 1e-9
        speakers = [turn.person for turn in turns if turn.person is not None]
        assert all(p in range(people) for p in speakers)
        if people > 1:
            assert all(a != b for a, b in zip(speakers, speakers[1:]))
        pauses += sum(turn.person is None for turn in turns)
    assert pauses > 0


def test_a_fixed_duration_and_grid_shapes(wild_clips, bench_cfg):
    grids = {n: plan_meetings(wild_clips, n, 1, bench_cfg, seed=0, duration_s=6.0)[0].grid for n in (1, 2, 3, 4, 5, 8)}
    assert grids == {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2), 5: (2, 3), 8: (2, 4)}
    plan = plan_meetings(wild_clips, 2, 1, bench_cfg, seed=0, duration_s=6.0)[0]
    assert plan.duration_s == 6.0 and plan.turns[-1].end_s == 6.0


def test_too_few_clips_or_bad_settings_are_refused(wild_clips, bench_cfg):
    with pytest.raises(RtdiarError, match="3 different clips"):
        plan_meetings(wild_clips[:2], 3, 1, bench_cfg, seed=0)
    section = dataclasses.asdict(bench_cfg)
    with pytest.raises(RtdiarError, match="turn_s"):
        composite_config({**section, "turn_s": [2.0, 1.0]})
    with pytest.raises(RtdiarError, match="tile_px"):
        composite_config({**section, "tile_px": 127})


def test_voiced_frames_follow_the_clips_own_loudness(shared_dir):
    frames = 20
    loud = np.sin(np.arange(10 * SAMPLES_PER_FRAME) * 0.3).astype(np.float32)
    quiet = 0.001 * np.random.default_rng(0).standard_normal(5 * SAMPLES_PER_FRAME).astype(np.float32)
    samples = np.concatenate([loud, np.zeros(5 * SAMPLES_PER_FRAME, np.float32), quiet])  # 5 frames short
    expected = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    np.testing.assert_array_equal(voiced_frames(samples, RATE, 25.0, frames, -30.0), expected)
    assert not voiced_frames(np.zeros(4000, np.float32), RATE, 25.0, frames, -30.0).any()
    speech = decode_audio(shared_dir / "data" / "dev" / "wild" / "grid_lbbc2a.mpg", RATE)  # a sentence between silences
    share = voiced_frames(speech, RATE, 25.0, len(speech) // SAMPLES_PER_FRAME, -30.0).mean()
    assert 0.3 <= share <= 0.95


def test_tile_of_uses_the_box_centre():
    tiles = [(0, 0, 128, 128), (128, 0, 256, 128)]
    assert tile_of((40, 40, 90, 90), tiles) == 0
    assert tile_of((200, 10, 250, 60), tiles) == 1
    assert tile_of((100, 10, 200, 60), tiles) == 1  # straddles both, centre in the second
    assert tile_of((260, 10, 300, 60), tiles) is None
    assert tile_of((40, 130, 90, 180), tiles) is None


@pytest.fixture(scope="module")
def rendered(shared_dir, wild_clips, bench_cfg, tmp_path_factory) -> tuple[MeetingPlan, Truth]:
    """A 6 s meeting of two 25 fps clips, with a pause between turns."""
    clips = [clip for clip in wild_clips if clip.name.startswith("pcavs_")]
    plans = plan_meetings(clips, 2, 20, bench_cfg, seed=0, duration_s=6.0)
    plan = next(p for p in plans if any(turn.person is None for turn in p.turns[:-1]))
    config = load_config()
    return plan, render_meeting(plan, tmp_path_factory.mktemp("meetings"), bench_cfg, config.audio, config.video)


def _looped_clip_audio(clip: Path, start_frame: int, start: int, stop: int) -> np.ndarray:
    """Output samples [start, stop) of a tile's sound, computed from the clip on its own."""
    config = load_config()
    period = count_frames(clip) * SAMPLES_PER_FRAME
    audio = FileSource(clip, None, "fast", config.video, config.audio).aligned_audio()[:period]
    audio = np.pad(audio, (0, period - len(audio)))
    return audio[(start_frame * SAMPLES_PER_FRAME + np.arange(start, stop)) % period]


def test_rendered_meeting_has_the_promised_size_frames_and_sound(rendered):
    plan, truth = rendered
    info = probe(truth.video)
    assert (info.width, info.height) == (256, 128) == (truth.width, truth.height)
    assert info.has_audio
    assert count_frames(truth.video) == truth.frames == 150
    assert truth.tiles == [(0, 0, 128, 128), (128, 0, 256, 128)]
    assert truth.clips == [clip.name for clip in plan.clips]
    stored = json.loads(truth.video.with_name(f"{plan.name}.truth.json").read_text())
    assert Truth.from_json(stored) == truth


def test_truth_marks_speech_only_inside_the_persons_turns(rendered):
    plan, truth = rendered
    assert len(truth.speaker) == truth.frames
    assert {p for p in truth.speaker if p is not None} == {0, 1}
    for k, person in enumerate(truth.speaker):
        if person is not None:
            t = k / truth.fps
            assert any(turn.person == person and turn.start_s <= t < turn.end_s for turn in plan.turns)


def test_each_turn_sounds_the_speakers_own_clip_at_the_same_moment_and_pauses_are_silent(rendered):
    plan, truth = rendered
    sound = decode_audio(truth.video, RATE)
    margin = int(0.1 * RATE)  # AAC spreads a cut over a few ms on each side
    for pause in (turn for turn in plan.turns if turn.person is None):
        quiet = sound[round(pause.start_s * RATE) + margin:round(pause.end_s * RATE) - margin]
        assert np.abs(quiet).max() < 1e-3
    max_lag = 5 * SAMPLES_PER_FRAME
    for turn in plan.turns:
        if turn.person is None or turn.end_s - turn.start_s < 0.5:
            continue
        start, stop = round(turn.start_s * RATE) + margin, round(turn.end_s * RATE) - margin
        heard = sound[start:stop]
        assert np.sqrt(np.mean(heard ** 2)) > 0.01
        for person, (clip, first) in enumerate(zip(plan.clips, plan.clip_start_frames)):
            own = _looped_clip_audio(clip, first, start - max_lag, stop + max_lag)
            corr = correlate(own, heard, mode="valid") / (np.linalg.norm(heard) * np.linalg.norm(own[max_lag:-max_lag]))
            if person == turn.person:  # the peak within half a frame: a frame off would fail
                assert abs(int(np.argmax(corr)) - max_lag) < SAMPLES_PER_FRAME // 2 and corr.max() > 0.9
            else:
                assert np.abs(corr).max() < 0.3


def test_each_tile_shows_its_clip_frame_in_step_with_its_sound(rendered):
    """Output frame k of a tile is clip frame (start + k) mod L: the nearest of the clip's frames around it."""
    plan, truth = rendered
    output = _frames(truth.video)
    for person, (clip, first) in enumerate(zip(plan.clips, plan.clip_start_frames)):
        source = [cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA) for image in _frames(clip)]
        x1, y1, x2, y2 = truth.tiles[person]
        nearest = []
        for k, image in enumerate(output):
            tile = image[y1:y2, x1:x2]
            errors = [np.abs(tile - source[(first + k + shift) % len(source)]).mean() for shift in range(-3, 4)]
            nearest.append(int(np.argmin(errors)) - 3)
        assert np.mean(np.array(nearest) == 0) > 0.8  # still faces make a few frames ambiguous


def _frames(video: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    images = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        images.append(image.astype(np.float32))
    capture.release()
    return images


def test_rendering_the_same_plan_again_reuses_the_files_and_a_changed_plan_does_not(rendered, bench_cfg):
    plan, truth = rendered
    config = load_config()
    truth_path = truth.video.with_name(f"{plan.name}.truth.json")
    stamps = (truth.video.stat().st_mtime_ns, truth_path.stat().st_mtime_ns)
    assert render_meeting(plan, truth.video.parent, bench_cfg, config.audio, config.video) == truth
    assert (truth.video.stat().st_mtime_ns, truth_path.stat().st_mtime_ns) == stamps
    changed = dataclasses.replace(plan, name="changed")
    first = render_meeting(changed, truth.video.parent, bench_cfg, config.audio, config.video)
    stamp = first.video.stat().st_mtime_ns
    changed.clip_start_frames = [start + 1 for start in changed.clip_start_frames]
    assert render_meeting(changed, truth.video.parent, bench_cfg, config.audio, config.video) != first
    assert first.video.stat().st_mtime_ns != stamp
    assert sorted(path.name for path in truth.video.parent.iterdir()) == sorted(
        [f"{plan.name}.mp4", f"{plan.name}.truth.json", "changed.mp4", "changed.truth.json"])  # no leftovers
