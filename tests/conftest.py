"""Shared fixtures: the real clips in ../shared (never copied into the repo) and the config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rtdiar.config import Config, load_config
from rtdiar.scorers.base import TrackWindow

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # Qt tests run without a screen

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEV_WILD = SHARED / "data" / "dev" / "wild"
WEIGHTS_FIXTURE = SHARED / "fixtures" / "wav2lip_lipsync_expert_state_dict_shapes.json"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def dev_clip(shared_dir: Path) -> Path:
    """A short real talking-face clip (25 fps, one face, speech)."""
    return DEV_WILD / "pcavs_00067.mp4"


@pytest.fixture
def config() -> Config:
    return load_config()


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """Weights the tests initialise themselves: enough to exercise every path but the accuracy."""
    import torch

    from rtdiar.scorers.syncnet import build_model, save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random_wav2lip.safetensors"
    save_weights(build_model("wav2lip"), path, "wav2lip", {"note": "random initialisation, tests only"})
    return path


def count_frames(path: Path) -> int:
    """Frames in a video, counted by decoding (what a user would check with ffprobe -count_frames)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


@pytest.fixture(scope="session", autouse=True)
def no_downloads(tmp_path_factory) -> Iterator[Path]:
    """An empty RTDIAR_WEIGHTS_DIR for every test: the default judgement (`auto`) is the one a fresh
    install has, whatever this machine downloaded, and nothing touches the user's cache."""
    folder = tmp_path_factory.mktemp("no_downloads")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTDIAR_WEIGHTS_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def installed_asd_weights(shared_dir: Path, tmp_path_factory) -> Path:
    """The four third-party active-speaker weights installed once from ../shared/weights (checksums verified)."""
    from rtdiar.scorers.registry import MODELS, install_from

    folder = tmp_path_factory.mktemp("asd_weights")
    with pytest.MonkeyPatch.context() as patch:  # only while installing: a test asks for them (`asd_weights_dir`)
        patch.setenv("RTDIAR_WEIGHTS_DIR", str(folder))
        for model in MODELS.values():
            if not model.shipped:
                install_from(model.name, shared_dir / "weights")
    return folder


@pytest.fixture
def asd_weights_dir(installed_asd_weights: Path, monkeypatch) -> Path:
    """RTDIAR_WEIGHTS_DIR holding the downloads, for this test and the `rtdiar` processes it starts:
    `--weights lrasd-ava` resolves, and `auto` is rtdiar-joint."""
    monkeypatch.setenv("RTDIAR_WEIGHTS_DIR", str(installed_asd_weights))
    return installed_asd_weights


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Streaming runs hundreds of small ops: on a busy 2-core machine, a second torch thread makes each
    one wait for a core (minutes instead of seconds), and on an idle one it saves little. The active-
    speaker scorer sets one thread itself (`asd.threads`); this puts the test session's count back."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def streamed_clip(scorer, frames: int = 72, track_id: int = 4) -> tuple[dict, np.ndarray, np.ndarray]:
    """Random grey faces and MFCCs streamed through an active-speaker scorer one frame at a time, the
    sound window as the engine cuts it: ({step: the track's raw score or None}, faces, MFCCs)."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (frames, 112, 112), dtype=np.uint8)
    mfcc = rng.normal(0.0, 5.0, (4 * frames, 13)).astype(np.float32)
    rows_kept = 4 * scorer.needs.audio_frames
    live = {}
    for step in range(frames):
        audio = mfcc[max(0, 4 * step + 4 - rows_kept):4 * step + 4]
        live[step] = scorer.score_frame(step, [TrackWindow(track_id, faces[step:step + 1])], audio).raw.get(track_id)
    return live, faces, mfcc
