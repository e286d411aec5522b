"""The live sound front end: each frame's embedding computed once, equal to a pass over the whole window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdiar.scorers.active_speaker import AUDIO_CONTEXT_FRAMES
from rtdiar.scorers.sound_stream import SoundStream
from rtdiar.scorers.syncnet import build_model

WINDOW, KEPT = 42, 25  # LR-ASD's: 25 frames of back end, 9 of delay, 8 of context


def _windows(stream: np.ndarray, steps: list[int]):
    """(step, the MFCC rows of the frames up to it, at most WINDOW of them), as the engine cuts them."""
    for step in steps:
        stop = 4 * (step + 1)
        yield step, stream[max(0, stop - 4 * WINDOW):stop]


@pytest.mark.parametrize("arch", ["lrasd", "lightasd", "distilled"])
@pytest.mark.parametrize("delay", [9, 0])
def test_every_window_reads_as_the_front_end_on_the_whole_window(arch, delay):
    """Steps one by one, twice (a 30 fps source), skipped (20 fps), and a stream that goes back in
    time (another clip): each call gives what the front end gives on that whole window."""
    torch.manual_seed(0)
    net = build_model(arch).eval()
    rng = np.random.default_rng(0)
    stream = rng.normal(0.0, 5.0, (4 * 120, 13)).astype(np.float32)
    other = rng.normal(0.0, 5.0, stream.shape).astype(np.float32)
    live = SoundStream(net.audio_frontend, AUDIO_CONTEXT_FRAMES, torch.device("cpu"))
    steps = [*range(0, 50), 50, 50, 51, 53, 54, 56, *range(57, 70)]
    calls = [(s, w) for s, w in _windows(stream, steps)] + list(_windows(other, list(range(30, 60))))
    for step, mfcc in calls:
        frames = len(mfcc) // 4
        if frames <= delay:
            continue
        got = live.embed(step, mfcc, frames - delay, KEPT)
        with torch.inference_mode():
            want = net.audio_frontend(torch.from_numpy(mfcc)[None])[0, max(0, frames - delay - KEPT):frames - delay]
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5), f"step {step}"


def test_a_streaming_window_computes_only_the_frames_it_adds():
    """Once the window is full, a call runs the front end on the new frame and its reach each side,
    not on the 42 frames of the window."""
    net = build_model("lrasd").eval()
    rows_in = []

    def frontend(mfcc: torch.Tensor) -> torch.Tensor:
        rows_in.append(mfcc.shape[1])
        return net.audio_frontend(mfcc)

    live = SoundStream(frontend, AUDIO_CONTEXT_FRAMES, torch.device("cpu"))
    stream = np.random.default_rng(1).normal(0.0, 5.0, (4 * 100, 13)).astype(np.float32)
    for step, mfcc in _windows(stream, list(range(100))):
        if len(mfcc) // 4 > 9:
            live.embed(step, mfcc, len(mfcc) // 4 - 9, KEPT)
    assert rows_in[-30:] == [4 * (2 * AUDIO_CONTEXT_FRAMES + 1)] * 30  # the new frame and 8 each side
