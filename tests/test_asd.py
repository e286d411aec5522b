"""LR-ASD and Light-ASD: the published files load key for key, score the dev clip as the authors'
code does, and the face front end streams frame by frame exactly as it runs offline."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import python_speech_features
import torch

from rtdiar.errors import RtdiarError
from rtdiar.media import decode_audio
from rtdiar.scorers.asd_stream import VisualStream
from rtdiar.scorers.syncnet import build_model, load_weights, weights_arch

REFERENCE = Path(__file__).parent / "fixtures" / "asd_reference.json"
FILES = {
    "lrasd_pretrain_AVA.model": "lrasd",
    "lrasd_finetuning_TalkSet.model": "lrasd",
    "lightasd_pretrain_AVA_CVPR.model": "lightasd",
    "lightasd_finetuning_TalkSet.model": "lightasd",
}
RECEPTIVE_FRAMES = {"lrasd": 9, "lightasd": 6}  # 3 blocks of 5 + 3 frames; of max(3, 5) frames
SMALL_PX = 32  # the encoders are fully convolutional: small random faces test the streaming quickly
CPU = torch.device("cpu")


def published(shared_dir: Path, name: str, arch: str) -> torch.nn.Module:
    model = build_model(arch)
    load_weights(model, shared_dir / "weights" / name)
    return model.eval()


def random_net(arch: str) -> torch.nn.Module:
    """Random weights and batch-norm statistics away from the identity, so the folding is exercised."""
    torch.manual_seed(0)
    model = build_model(arch)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def dev_inputs(dev_clip: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' demo inputs for the first 50 frames: (1, 200, 13) MFCCs, (1, 50, 112, 112) grey faces."""
    capture = cv2.VideoCapture(str(dev_clip))
    faces = []
    while len(faces) < 50:
        ok, frame = capture.read()
        assert ok
        grey = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (224, 224))
        faces.append(grey[56:168, 56:168])
    capture.release()
    audio = decode_audio(dev_clip) * 32768  # their demo feeds int16 samples
    mfcc = python_speech_features.mfcc(audio, 16000, numcep=13, winlen=0.025, winstep=0.010)[:200]
    return torch.from_numpy(mfcc).float()[None], torch.from_numpy(np.stack(faces))[None]


@pytest.mark.parametrize("name", FILES)
def test_published_file_loads_key_for_key_and_names_its_family(shared_dir, name):
    path = shared_dir / "weights" / name
    model = published(shared_dir, name, FILES[name])
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    assert weights_arch(path) == FILES[name]


@pytest.mark.parametrize("arch, other", [("lrasd", "lightasd_finetuning_TalkSet.model"),
                                         ("lightasd", "lrasd_finetuning_TalkSet.model")])
def test_the_other_familys_file_is_refused_in_one_line_naming_a_key(shared_dir, arch, other):
    with pytest.raises(RtdiarError) as caught:
        load_weights(build_model(arch), shared_dir / "weights" / other)
    message = str(caught.value)
    assert "\n" not in message
    assert f"do not fit model '{arch}'" in message and "key model." in message


def test_weights_arch_knows_wav2lip_by_its_keys_and_nothing_else(tmp_path):
    wav2lip, unknown = tmp_path / "expert.pth", tmp_path / "other.pth"
    torch.save({"state_dict": {"face_encoder.0.conv_block.0.weight": torch.zeros(2)}}, wav2lip)
    torch.save({"layer.weight": torch.zeros(2)}, unknown)
    assert weights_arch(wav2lip) == "wav2lip"
    assert weights_arch(unknown) is None


@pytest.mark.parametrize("name", FILES)
def test_speaking_logits_match_the_authors_code(shared_dir, dev_inputs, name):
    expected = json.loads(REFERENCE.read_text())["scores"][name]
    mfcc, faces = dev_inputs
    model = published(shared_dir, name, FILES[name])
    with torch.inference_mode():
        audio_emb, visual_emb = model.audio_frontend(mfcc), model.visual_frontend(faces)
        logits = model.speaking_logits(audio_emb, visual_emb)
    assert audio_emb.shape == visual_emb.shape == model.backend(audio_emb, visual_emb).shape == (1, 50, 128)
    np.testing.assert_allclose(logits[0].numpy(), expected, atol=1e-3)
    assert (logits > 0).float().mean() > 0.9  # a face-centred talking face: speaking, as their demo reads it


@pytest.mark.parametrize("name", ["lrasd_finetuning_TalkSet.model", "lightasd_finetuning_TalkSet.model"])
def test_a_frame_reaches_exactly_the_receptive_field(shared_dir, dev_inputs, name):
    model = published(shared_dir, name, FILES[name])
    faces = dev_inputs[1][:, :30]
    changed = faces.clone()
    changed[0, 15] = 255 - changed[0, 15]
    with torch.inference_mode():
        moved = (model.visual_frontend(faces) - model.visual_frontend(changed)).abs().amax(dim=2)[0]
    reach = RECEPTIVE_FRAMES[FILES[name]]
    assert model.visual_encoder.receptive_frames == reach
    assert torch.nonzero(moved > 0).flatten().tolist() == list(range(15 - reach, 15 + reach + 1))


def offline_rows(model: torch.nn.Module, frames: np.ndarray) -> list[np.ndarray]:
    """For every n, the offline embeddings of frames[0:n] (the future not there: zero-padded)."""
    with torch.inference_mode():
        return [model.visual_frontend(torch.from_numpy(frames[:n])[None])[0].numpy() for n in range(1, len(frames) + 1)]


@pytest.mark.parametrize("arch", RECEPTIVE_FRAMES)
def test_stream_equals_offline_on_the_frames_so_far_at_every_delay(one_thread, arch):
    model = random_net(arch)
    rng = np.random.default_rng(0)
    length, starts = 16, {7: 0, 8: 3, 9: 6}  # track id -> the push it starts at
    frames = {tid: rng.integers(0, 256, (length, SMALL_PX, SMALL_PX), dtype=np.uint8) for tid in starts}
    expected = {tid: offline_rows(model, track) for tid, track in frames.items()}
    for delay in range(RECEPTIVE_FRAMES[arch] + 1):
        stream = VisualStream(model, delay, CPU, face_px=SMALL_PX)
        pushed = dict.fromkeys(starts, 0)
        for step in range(length + 6):
            listed = [tid for tid, start in starts.items() if start <= step and pushed[tid] < length
                      and (tid, step) != (9, 10)]  # track 9 misses a frame: it waits, unchanged
            out = stream.push({tid: frames[tid][pushed[tid]] for tid in listed})
            for tid in listed:
                pushed[tid] += 1
                n = pushed[tid]
                if n <= delay:
                    assert tid not in out
                else:
                    np.testing.assert_allclose(out[tid], expected[tid][n - 1][n - 1 - delay], atol=1e-4)
            assert set(out) <= set(listed)


@pytest.mark.parametrize("name", ["lrasd_finetuning_TalkSet.model", "lightasd_finetuning_TalkSet.model"])
def test_stream_of_the_real_faces(one_thread, shared_dir, dev_inputs, name):
    model = published(shared_dir, name, FILES[name])
    faces = dev_inputs[1][0, :20].numpy()
    reach = RECEPTIVE_FRAMES[FILES[name]]
    with torch.inference_mode():
        whole = model.visual_frontend(torch.from_numpy(faces)[None])[0].numpy()
        early = {n: model.visual_frontend(torch.from_numpy(faces[:n])[None])[0, n - 1].numpy() for n in (1, 8, 20)}
    exact, causal = VisualStream(model, reach, CPU), VisualStream(model, 0, CPU)
    for n, face in enumerate(faces, start=1):
        if n > reach:  # a row the future can no longer change: the whole clip's
            np.testing.assert_allclose(exact.push({0: face})[0], whole[n - 1 - reach], atol=1e-4)
        else:
            assert exact.push({0: face}) == {}
        embedding = causal.push({0: face})[0]
        if n in early:
            np.testing.assert_allclose(embedding, early[n], atol=1e-4)


def test_forget_restarts_a_track(one_thread):
    model = random_net("lightasd")
    rng = np.random.default_rng(1)
    old, new = (rng.integers(0, 256, (8, SMALL_PX, SMALL_PX), dtype=np.uint8) for _ in range(2))
    stream, fresh = VisualStream(model, 2, CPU, face_px=SMALL_PX), VisualStream(model, 2, CPU, face_px=SMALL_PX)
    for face in old:
        stream.push({5: face})
    stream.forget(5)
    for n, face in enumerate(new, start=1):
        got, want = stream.push({5: face}), fresh.push({5: face})
        assert got.keys() == want.keys() == ({5} if n > 2 else set())
        if n > 2:
            np.testing.assert_array_equal(got[5], want[5])


def test_stream_refuses_a_delay_past_the_receptive_field():
    with pytest.raises(RtdiarError, match="0 .. 9"):
        VisualStream(random_net("lrasd"), 10, CPU)
