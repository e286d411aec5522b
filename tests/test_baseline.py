"""The training-free scorer: its score is the correlation of mouth opening and loudness, and it
prefers a mouth that opens when the sound gets loud."""

from __future__ import annotations

import numpy as np
import torch

from rtdiar.scorers.baseline import EnergyBaseline
from rtdiar.scorers.inference import SyncScorer

OPEN_FRAMES = np.array([1, 0, 0, 1, 1])  # which of the 5 frames have the mouth open (asymmetric in time)


def scorer() -> SyncScorer:
    return SyncScorer(EnergyBaseline(), torch.device("cpu"))


def talking_window() -> np.ndarray:
    """(1, 5, 48, 96, 3) lower-face crops: grey skin, a dark mouth cavity on the open frames."""
    window = np.full((1, 5, 48, 96, 3), 160, dtype=np.uint8)
    rows, cols = np.mgrid[:48, :96]
    mouth = ((rows - 18) / 7.0) ** 2 + ((cols - 48) / 16.0) ** 2 <= 1.0
    for frame, is_open in enumerate(OPEN_FRAMES):
        window[0, frame][mouth] = 30 if is_open else 140
    return window


def loud_when_open() -> np.ndarray:
    """(80, 16) mel: loud on the mel frames of the open frames (3.2 mel frames per video frame), silent otherwise."""
    frame_of_mel = (np.arange(16) // 3.2).astype(int)
    return np.where(OPEN_FRAMES[frame_of_mel][None, :] == 1, 2.0, -4.0).repeat(80, axis=0).astype(np.float32)


def test_has_no_parameters_and_nothing_to_load():
    model = EnergyBaseline()
    assert list(model.parameters()) == []
    assert model.state_dict() == {}


def test_score_is_the_pearson_correlation_of_mouth_opening_and_loudness():
    gen = torch.Generator().manual_seed(0)
    faces = torch.rand(6, 15, 48, 96, generator=gen)
    mels = torch.rand(6, 1, 80, 16, generator=gen) * 8 - 4
    model = EnergyBaseline()
    with torch.inference_mode():
        cosine = (model.embed_faces(faces) * model.embed_audio(mels)).sum(dim=1).numpy()
        opening, loudness = model.mouth_opening(faces).numpy(), model.loudness(mels).numpy()
    assert opening.shape == loudness.shape == (6, 5)
    pearson = [np.corrcoef(o, a)[0, 1] for o, a in zip(opening, loudness)]
    np.testing.assert_allclose(cosine, pearson, atol=1e-5)


def test_each_video_frame_hears_its_own_mel_frames():
    mel = torch.full((1, 1, 80, 16), -4.0)
    mel[..., 6:10] = 4.0  # the middle of video frame 2 (mel frames 6.4 to 9.6)
    loudness = EnergyBaseline().loudness(mel)[0]
    assert int(loudness.argmax()) == 2
    assert loudness[0] == loudness[4] == -4.0


def test_mouth_opening_with_loud_sound_beats_the_same_sound_reversed():
    window, mel = talking_window(), loud_when_open()
    in_sync = scorer().score(window, mel)[0]
    reversed_in_time = scorer().score(window, mel[:, ::-1].copy())[0]
    assert in_sync > 0.9
    assert in_sync > reversed_in_time


def test_silence_and_a_still_mouth_favour_nobody():
    window = talking_window()
    assert scorer().score(window, np.full((80, 16), -4.0, np.float32))[0] == 0.0
    still = np.repeat(window[:, :1], 5, axis=1)
    assert scorer().score(still, loud_when_open())[0] == 0.0
