"""Training: the contrastive batch is built right, the loss rewards sync, a run saves, resumes and refuses to clobber."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from rtdiar.config import load_config
from rtdiar.lab.dataset import PreparedClip
from rtdiar.errors import RtdiarError
from rtdiar.scorers.inference import load_scorer, pack_faces
from rtdiar.scorers.syncnet import build_model, load_weights
from rtdiar.lab.training import (ClipBank, WindowAUC, augment_faces, augment_mels, compress_faces, contrastive_loss,
                             in_sync_starts, load_train_config, recipe_clips, train_model, training_bank)


def _synthetic_clip(name: str, frames: int, seed: int) -> PreparedClip:
    """A clip whose crop brightness at grid frame k is stamped with k, and whose mel column m is m."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 255, (frames, 48, 96, 3), dtype=np.uint8)
    crops[:, 0, 0, 0] = np.arange(frames)
    mel_frames = int(round(frames * 3.2)) + 4
    mel = np.tile(np.arange(mel_frames, dtype=np.float32), (80, 1))
    return PreparedClip(name=name, crops=crops, valid=np.ones(frames, bool), first_frame=0, mel=mel)


def test_a_batch_pairs_each_video_window_with_its_own_audio_position():
    recipe = load_train_config()
    clips = [_synthetic_clip(f"c{i}", 30, i) for i in range(4)]
    bank = ClipBank(clips, np.ones(4), recipe.batch)
    batch = bank.sample(np.random.default_rng(0))
    assert batch["faces"].shape[1:] == (5, 48, 96, 3) and batch["mels"].shape[1:] == (80, 16)
    for face, (slot, k) in zip(batch["faces"], batch["video_key"]):
        assert face[0, 0, 0, 0] == k  # the window starts at grid frame k
        match = np.flatnonzero((batch["audio_key"][:, 0] == slot) & (batch["audio_key"][:, 1] == k))
        assert len(match) == 1  # exactly one positive audio window in the batch
        assert batch["mels"][match[0], 0, 0] == clips[0].mel_index(k)  # and it starts at the window's time



def test_coded_sound_replaces_the_chosen_share_of_clips_and_is_otherwise_free():
    """Coded copy v of a clip's mel is its mel + 1000 (v + 1), so every batch shows which sound each clip got."""
    recipe = load_train_config()
    clips = [_synthetic_clip(f"c{i}", 30, i) for i in range(8)]
    coded = [np.stack([c.mel + 1000.0 * (v + 1) for v in range(2)]).astype(np.float16) for c in clips]
    plain = ClipBank(clips, np.ones(8), recipe.batch).sample(np.random.default_rng(0))
    never = ClipBank(clips, np.ones(8), recipe.batch, coded=None, coded_share=1.0).sample(np.random.default_rng(0))
    assert all(np.array_equal(plain[k], never[k]) for k in plain)  # no coded mels: the same batch, no draws
    always = ClipBank(clips, np.ones(8), recipe.batch, coded=coded, coded_share=1.0)
    seen = set()
    for seed in range(5):
        batch = always.sample(np.random.default_rng(seed))
        for slot in np.unique(batch["audio_key"][:, 0]):
            level = batch["mels"][batch["audio_key"][:, 0] == slot, 0, 0] // 1000
            assert len(set(level)) == 1 and level[0] in (1, 2)  # one codec for all of a clip's windows
            seen.add(int(level[0]))
    assert seen == {1, 2}
    half = ClipBank(clips, np.ones(8), recipe.batch, coded=coded, coded_share=0.5)
    levels = [int(half.sample(np.random.default_rng(seed))["mels"][0, 0, 0] // 1000) for seed in range(200)]
    assert 0.35 < np.mean(np.array(levels) > 0) < 0.65

class _StampScorer:
    """A first model right by construction: a face window is embedded at the time stamped on its first
    crop plus the lag stamped beside it, an audio window at its own time, on a circle (cosine = closeness)."""

    @staticmethod
    def _circle(t: np.ndarray) -> np.ndarray:
        angle = 2 * np.pi * np.asarray(t, float) / 60.0
        return np.stack([np.cos(angle), np.sin(angle)], axis=1)

    needs_lips = False  # reads crops only, as the scorer of a pixel model

    def face_embeddings(self, windows: np.ndarray, lips: np.ndarray | None = None) -> np.ndarray:
        first = windows[:, 0, 0, 0].astype(float)
        return self._circle(first[:, 0] + first[:, 1])

    def audio_embeddings(self, mels: np.ndarray) -> np.ndarray:
        return self._circle(mels[:, 0, 0] / 3.2)  # the synthetic mel column m is m, 3.2 columns a frame


def test_the_sync_filter_keeps_only_windows_the_first_model_finds_in_sync():
    clip = _synthetic_clip("c", 40, 0)
    clip.crops[:, 0, 0, 1] = 0
    clip.crops[10:15, 0, 0, 1] = 6  # windows starting here look 6 frames out of sync to the first model
    clip.crops[20, 0, 0, 1] = 2     # within the tolerance: kept
    window = load_config().window
    kept = in_sync_starts([clip], _StampScorer(), tolerance=2, window=window)[0]
    assert kept.tolist() == [k for k in clip.window_starts() if not 10 <= k < 15]

    bank = ClipBank([clip], np.ones(1), load_train_config().batch, starts=[kept])
    rng = np.random.default_rng(0)
    batches = [bank.sample(rng) for _ in range(50)]
    drawn = np.concatenate([b["video_key"][:, 1] for b in batches])
    assert set(drawn) == set(kept)  # every kept window is used, no dropped one
    heard = np.concatenate([b["audio_key"][:, 1] for b in batches])
    assert np.isin(np.arange(10, 15), heard).all()  # their audio still serves as negatives


def _keys(n_clips: int, positions: int) -> torch.Tensor:
    return torch.tensor([(c, p) for c in range(n_clips) for p in range(positions)])


def test_the_loss_rewards_embeddings_that_match_in_time():
    keys = _keys(3, 10)
    matched = torch.nn.functional.normalize(torch.randn(len(keys), 16), dim=1)
    shuffled = matched[torch.randperm(len(keys), generator=torch.Generator().manual_seed(0))]
    scale = torch.tensor(np.log(10.0))
    in_sync = contrastive_loss(matched, matched, keys, keys, scale, ambiguous_shift=2)
    off_sync = contrastive_loss(matched, shuffled, keys, keys, scale, ambiguous_shift=2)
    assert in_sync < off_sync


def test_audio_next_to_the_truth_is_neither_positive_nor_negative():
    keys = _keys(1, 6)
    faces = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    audio = faces.clone()
    audio[1] = faces[0]  # the audio one frame after window 0 looks just like window 0's
    scale = torch.tensor(np.log(10.0))
    masked = contrastive_loss(faces[:1], audio, keys[:1], keys, scale, ambiguous_shift=1)
    unmasked = contrastive_loss(faces[:1], audio, keys[:1], keys, scale, ambiguous_shift=0)
    assert masked < unmasked


def test_augmentation_keeps_shapes_and_range_and_is_seeded():
    recipe = load_train_config().augment
    faces = pack_faces(torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 5, 48, 96, 3), dtype=np.uint8)))
    first = augment_faces(faces, recipe, torch.Generator().manual_seed(1))
    again = augment_faces(faces, recipe, torch.Generator().manual_seed(1))
    assert first.shape == faces.shape and 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, faces)
    mels = torch.full((4, 1, 80, 16), -4.0)
    noisy = augment_mels(mels, recipe, torch.Generator().manual_seed(1))
    assert noisy.shape == mels.shape and float(noisy.max()) <= 4.0 and float(noisy.mean()) > -4.0  # a noise floor


def test_jpeg_coding_touches_only_the_chosen_share_of_windows():
    recipe = load_train_config().augment
    crops = np.random.default_rng(0).integers(0, 255, (200, 5, 48, 96, 3), dtype=np.uint8)
    coded = compress_faces(crops, recipe, torch.Generator().manual_seed(1))
    changed = (coded != crops).any(axis=(1, 2, 3, 4))
    assert coded.shape == crops.shape and coded.dtype == np.uint8
    assert abs(changed.mean() - recipe.jpeg) < 0.1  # about the configured share, each of them altered
    np.testing.assert_array_equal(coded, compress_faces(crops, recipe, torch.Generator().manual_seed(1)))
    recipe.jpeg = 0.0
    np.testing.assert_array_equal(compress_faces(crops, recipe, torch.Generator().manual_seed(1)), crops)


def test_window_auc_of_a_perfect_scorer_is_one():
    class Oracle(torch.nn.Module):
        """Embeds a window and an audio by their start time: only the true pairing has cosine 1."""

        def embed_faces(self, faces):
            k = faces[:, 0, 0, 0] * 255.0  # the stamped grid frame
            return torch.stack([torch.cos(k * 0.2), torch.sin(k * 0.2)], dim=1)

        def embed_audio(self, audio):
            k = audio[:, 0, 0, 0] / 3.2
            return torch.stack([torch.cos(k * 0.2), torch.sin(k * 0.2)], dim=1)

    recipe = load_train_config().validation
    validate = WindowAUC([_synthetic_clip("v", 60, 0)], recipe)
    assert validate(Oracle()) == 1.0


@pytest.fixture
def tiny_recipe(tmp_path, dev_clip):
    """Three short real clips, a few steps: the mechanics of a run, not its accuracy. The whole folder is
    named for training and one clip for validation, as a k-fold fold does."""
    import subprocess

    data = tmp_path / "data" / "wild"
    data.mkdir(parents=True)
    for i, start in enumerate(("0", "1.5", "3")):
        subprocess.run(["ffmpeg", "-v", "error", "-ss", start, "-t", "1.6", "-i", str(dev_clip), str(data / f"c{i}.mp4")],
                       check=True)
    recipe = load_train_config()
    recipe.data.train, recipe.data.validation = [str(data)], [str(data / "c2.mp4")]
    recipe.data.sync_filter = recipe.pair_with = None  # a single run, on every window
    recipe.run_dir = str(tmp_path / "run")
    recipe.cache_dir = str(tmp_path / "cache")
    recipe.prepare_workers = 1
    recipe.batch.clips = 2
    recipe.optim.max_steps = 2
    recipe.validation.every_steps = 1
    return recipe


def test_a_run_writes_loadable_weights_and_resumes(tiny_recipe, tmp_path):
    out = tmp_path / "w.safetensors"
    train_model(tiny_recipe, load_config(), out=out)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(0.0 <= r["validation_auc"] <= 1.0 for r in log)
    scorer = load_scorer(load_config(overrides={"model.weights": str(out)}))
    assert scorer.model.arch == "compact"

    with pytest.raises(RtdiarError, match="exists"):
        train_model(tiny_recipe, load_config(), out=out)
    with pytest.raises(RtdiarError, match="--resume"):
        train_model(tiny_recipe, load_config(), out=tmp_path / "other.safetensors")
    tiny_recipe.optim.max_steps = 3
    train_model(tiny_recipe, load_config(), out=out, resume=True, overwrite=True)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # continued, not restarted


def _run_weights(recipe, tmp_path, name: str, steps: int, ema: float, resume_from: int = 0) -> dict:
    """Train `steps` fixed steps (stopping after `resume_from` of them and resuming, when given); read what ships."""
    from safetensors.torch import load_file

    recipe.run_dir, recipe.optim.max_steps, recipe.optim.ema = str(tmp_path / name), steps, ema
    recipe.validation.keep = "last"
    out = tmp_path / f"{name}.safetensors"
    if resume_from:
        recipe.optim.max_steps = resume_from
        train_model(recipe, load_config(), out=out)
        recipe.optim.max_steps = steps
    train_model(recipe, load_config(), out=out, resume=bool(resume_from), overwrite=True)
    return load_file(out)


def test_a_run_with_a_weight_average_ships_the_average_and_resumes_it(tiny_recipe, tmp_path):
    first = _run_weights(tiny_recipe, tmp_path, "raw1", 1, ema=0.0)
    second = _run_weights(tiny_recipe, tmp_path, "raw2", 2, ema=0.0)
    averaged = _run_weights(tiny_recipe, tmp_path, "ema2", 2, ema=0.75)
    for name, tensor in averaged.items():
        if tensor.is_floating_point():  # the average of the two steps' weights, not the last step's
            torch.testing.assert_close(tensor, 0.75 * first[name] + 0.25 * second[name])
    assert not all(torch.equal(averaged[name], second[name]) for name in second)
    resumed = _run_weights(tiny_recipe, tmp_path, "ema_resumed", 2, ema=0.75, resume_from=1)
    for name, tensor in averaged.items():
        torch.testing.assert_close(resumed[name], tensor)  # the average survives a checkpoint
    tiny_recipe.run_dir, tiny_recipe.optim.ema = str(tmp_path / "bad"), 1.0
    with pytest.raises(RtdiarError, match="optim.ema"):
        train_model(tiny_recipe, load_config(), out=tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad").exists()  # refused before the run



def test_a_run_on_coded_sound_codes_each_training_clip_once(tiny_recipe, tmp_path):
    tiny_recipe.augment.codec, tiny_recipe.augment.codecs = 0.5, ["-ar 8000 -c:a libspeex"]
    train_model(tiny_recipe, load_config(), out=tmp_path / "w.safetensors")
    coded = sorted((tmp_path / "cache").rglob("*.npy"))
    assert [p.stem for p in coded] == ["c0", "c1"]  # the training clips, not the validation clip
    assert all(np.load(p).shape[:2] == (1, 80) for p in coded)

    tiny_recipe.augment.codecs = []
    with pytest.raises(RtdiarError, match="augment.codecs"):
        train_model(tiny_recipe, load_config(), out=tmp_path / "x.safetensors", resume=True)
    tiny_recipe.augment.codec, tiny_recipe.augment.codecs = 1.5, ["-c:a aac"]
    with pytest.raises(RtdiarError, match="augment.codec must be in"):
        train_model(tiny_recipe, load_config(), out=tmp_path / "x.safetensors", resume=True)

def test_learning_rate_warms_up_then_follows_the_schedule():
    from rtdiar.lab.training import learning_rate

    optim = load_train_config().optim
    optim.lr, optim.warmup_steps, optim.max_steps = 1e-3, 10, 100
    optim.schedule = "constant"
    assert learning_rate(optim, 0) == pytest.approx(1e-4) and learning_rate(optim, 50) == pytest.approx(1e-3)
    optim.schedule = "cosine"
    assert learning_rate(optim, 50) == pytest.approx(0.5e-3) and learning_rate(optim, 100) == pytest.approx(0.0)
    optim.schedule = "step"
    with pytest.raises(RtdiarError, match="schedule"):
        learning_rate(optim, 1)


def test_a_run_cleaned_by_a_first_model(tiny_recipe, tmp_path, random_weights, capsys):
    tiny_recipe.data.sync_filter = str(tmp_path / "missing.safetensors")
    with pytest.raises(RtdiarError, match="sync_filter"):
        train_model(tiny_recipe, load_config(), out=tmp_path / "w.safetensors")
    tiny_recipe.data.sync_filter = str(random_weights)
    train_model(tiny_recipe, load_config(), out=tmp_path / "w.safetensors")
    kept, total = map(int, re.search(r"keeps (\d+) of (\d+) training windows", capsys.readouterr().out).groups())
    assert 0 < kept < total  # a random first model finds some windows in sync and not others


def test_a_run_paired_with_an_earlier_model_ships_the_pair(tiny_recipe, tmp_path, random_weights):
    tiny_recipe.pair_with = str(random_weights)  # a wav2lip file: refused before any training
    with pytest.raises(RtdiarError, match="pair_with pairs .*'wav2lip' with the run's 'compact'"):
        train_model(tiny_recipe, load_config(), out=tmp_path / "first.safetensors")
    assert not (tmp_path / "run").exists()
    tiny_recipe.pair_with = None
    first = train_model(tiny_recipe, load_config(), out=tmp_path / "first.safetensors")
    tiny_recipe.pair_with = str(first)
    tiny_recipe.run_dir = str(tmp_path / "second")
    out = train_model(tiny_recipe, load_config(), out=tmp_path / "pair.safetensors")
    scorer = load_scorer(load_config(overrides={"model.weights": str(out)}))
    assert scorer.model.arch == "compact_pair"
    first_member = scorer.model.members[0].state_dict()
    for key, value in load_scorer(load_config(overrides={"model.weights": str(first)})).model.state_dict().items():
        torch.testing.assert_close(first_member[key], value)  # the earlier model, unchanged, is one half


def test_an_overlay_names_its_own_folders(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("data:\n  train: [my/clips]\n  folder_weights: {clips: 2.0}\noptim:\n  lr: 0.01\n")
    recipe = load_train_config(overlay)
    assert recipe.data.train == ["my/clips"] and recipe.data.folder_weights == {"clips": 2.0}
    assert recipe.optim.lr == 0.01 and recipe.optim.max_steps == load_train_config().optim.max_steps
    overlay.write_text("optim:\n  lr_typo: 0.01\n")
    with pytest.raises(RtdiarError, match="optim.lr_typo"):
        load_train_config(overlay)


def test_validation_clips_are_never_trained_on(tiny_recipe):
    bank = training_bank(tiny_recipe, load_config())
    assert len(bank.clips) == 2  # c2, named for validation, is left out of the folder that holds it
    tiny_recipe.data.train = tiny_recipe.data.validation
    with pytest.raises(RtdiarError, match="outside data.validation"):
        training_bank(tiny_recipe, load_config())


def test_a_fixed_step_run_without_validation_ships_its_last_step(tiny_recipe, tmp_path):
    tiny_recipe.data.validation = []
    tiny_recipe.validation.keep = "best"
    with pytest.raises(RtdiarError, match="keep: last"):
        train_model(tiny_recipe, load_config(), out=tmp_path / "w.safetensors")
    assert not (tmp_path / "run").exists()  # refused before the run
    tiny_recipe.validation.keep = "last"
    tiny_recipe.optim.max_steps = 3
    tiny_recipe.validation.every_steps = 2
    out = train_model(tiny_recipe, load_config(), out=tmp_path / "w.safetensors")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 3] and not any("validation_auc" in r for r in log)
    assert load_weights(build_model("compact"), out)["step"] == "3"


def test_the_kfold_folds_split_dev_wild_into_three_disjoint_sets(shared_dir):
    from rtdiar.config import PROJECT_ROOT

    folds = [load_train_config(PROJECT_ROOT / "configs" / "kfold" / f"fold{k}.yaml") for k in range(3)]
    held_out = [{clip.name for clip in recipe_clips(recipe.data.validation, recipe)} for recipe in folds]
    assert all(len(fold) == len(recipe.data.validation) for fold, recipe in zip(held_out, folds))  # every named clip exists
    assert sum(map(len, held_out)) == len(set().union(*held_out))  # no clip in two folds
    assert set().union(*held_out) == {clip.name for clip in recipe_clips(["../shared/data/dev/wild"], folds[0])}
    people = ({"grid_id2_vcd_swwp2s.mpg", "grid_pwij3p.mpg"}, {f"phone_weather{i}.mp4" for i in (2, 3, 4)})
    for person in people:  # one person's clips, one fold
        assert sum(bool(person & fold) for fold in held_out) == 1


def test_a_lips_run_paired_with_a_compact_model_ships_both(tiny_recipe, tmp_path):
    first = train_model(tiny_recipe, load_config(), out=tmp_path / "first.safetensors")
    tiny_recipe.arch, tiny_recipe.pair_with, tiny_recipe.run_dir = "lips", str(first), str(tmp_path / "lips")
    out = train_model(tiny_recipe, load_config(), out=tmp_path / "fused.safetensors")
    log = [json.loads(line) for line in (tmp_path / "lips" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= record["validation_auc"] <= 1.0 for record in log)  # validated on lip points
    scorer = load_scorer(load_config(overrides={"model.weights": str(out)}))
    assert scorer.model.arch == "compact_lips" and scorer.needs_lips
    assert [m.arch for m in scorer.model.members] == ["compact", "lips"]
    with pytest.raises(RtdiarError, match="pair_with pairs .*'compact_lips' with the run's 'lips'"):
        tiny_recipe.pair_with, tiny_recipe.run_dir = str(out), str(tmp_path / "again")
        train_model(tiny_recipe, load_config(), out=tmp_path / "again.safetensors")


def test_asking_whether_a_run_reads_lips_leaves_its_random_stream_alone():
    """The recipe's seed fixes the weights: building a throwaway model to read its inputs must not move it."""
    from rtdiar.lab.training import reads_lips

    recipe = load_train_config()
    for arch, lips in (("compact", False), ("lips", True)):
        recipe.arch = arch
        torch.manual_seed(0)
        assert reads_lips(recipe) == lips
        after = torch.rand(3)
        torch.manual_seed(0)
        torch.testing.assert_close(after, torch.rand(3))
