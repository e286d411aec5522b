"""Shared fixtures: the real clips in ../shared (never copied into the repo) and the config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtdiar.config import Config, load_config

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


@pytest.fixture(scope="session")
def asd_weights_dir(shared_dir: Path, tmp_path_factory) -> Iterator[Path]:
    """The four third-party active-speaker weights installed from ../shared/weights (checksums verified) into
    a temporary RTDIAR_WEIGHTS_DIR, set for the session, so `--weights lrasd-ava` resolves in tests and the
    `rtdiar` processes they start, and nothing touches the user's cache."""
    from rtdiar.scorers.registry import MODELS, install_from

    folder = tmp_path_factory.mktemp("asd_weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RTDIAR_WEIGHTS_DIR", str(folder))
        for model in MODELS.values():
            if not model.shipped:
                install_from(model.name, shared_dir / "weights")
        yield folder


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
