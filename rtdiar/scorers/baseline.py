"""The training-free scorer: does the mouth open when the sound gets loud? No parameters, no weights.

It is the floor every learned model must beat, and it runs anywhere the engine runs because it has
the same interface as `SyncNetColor`: `embed_faces` gives a per-frame mouth-opening signal and
`embed_audio` a per-frame loudness signal, each centred and L2-normalised over the window's 5 video
frames, so the cosine the scorer computes is their Pearson correlation.

Mouth opening is read as the darkness of the darkest tenth of the mouth zone of the lower-face crop:
the open mouth's cavity is the darkest thing there, and centring over the window removes the
person's skin tone and the lighting. Of the simple signals tried on the 33 `dev/wild` clips (window
AUC in sync vs shifts of 5 to 15 frames / clip offset right / two faces one voice, `rtdiar evaluate`),
it came first: darkest 10 % 0.585 / 50 % / 64 %; darkest 20 % 0.585 / 50 % / 63 %; grey-level spread
0.581 / 53 % / 60 %; mean darkness 0.571 / 49 % / 61 %; darkest 5 % 0.566; vertical-gradient energy
0.566; frame-to-frame motion 0.51 (0.53 against loudness change). Loudness is the mean over the
80 bands of Wav2Lip's log-mel (ahead of the lower 40 bands or the loudest band), each video frame
averaging the 3.2 mel frames it overlaps.
"""

from __future__ import annotations

import torch
from torch import nn

# Mouth zone of the 48 x 96 lower-face crop (the top rows hold the nose tip, the bottom ones the chin).
MOUTH_ROWS = slice(4, 32)
MOUTH_COLS = slice(24, 72)
DARK_FRACTION = 0.1  # the darkest tenth of the zone stands for the mouth cavity
# A centred signal shorter than this is flat: float rounding, not evidence. It must become exactly
# zero, or normalising (here and again in the cosine) would blow the rounding up to a unit vector.
FLAT_NORM = 1e-4


def frame_weights(frames: int, mel_frames: int) -> torch.Tensor:
    """(frames, mel_frames): how much of each mel frame falls in each video frame, rows summing to 1.

    With 5 video frames and 16 mel frames a video frame spans 3.2 mel frames, so a boundary mel frame
    is shared between two video frames in proportion to its overlap.
    """
    span = mel_frames / frames
    video = torch.arange(frames, dtype=torch.float64)[:, None] * span
    mel = torch.arange(mel_frames, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(video + span, mel + 1) - torch.maximum(video, mel)).clamp(min=0)
    return (overlap / span).float()


def _centred_unit(signal: torch.Tensor) -> torch.Tensor:
    """Centre over the window's frames and L2-normalise; a flat signal (silence, a still face) gives 0."""
    centred = signal - signal.mean(dim=1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    return torch.where(norm > FLAT_NORM, centred / norm.clamp(min=FLAT_NORM), torch.zeros_like(centred))


class EnergyBaseline(nn.Module):
    """Pearson correlation of mouth opening and loudness over the window's frames, as two unit vectors."""

    def __init__(self, frames: int = 5, mel_frames: int = 16) -> None:
        super().__init__()
        self.frames = frames
        # a buffer, not a parameter: the model stays parameter-free and moves with .to(device)
        self.register_buffer("mel_to_frames", frame_weights(frames, mel_frames), persistent=False)

    def mouth_opening(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 3 * frames, 48, 96) BGR crops in [0, 1] -> (B, frames): minus the mean grey level of the
        darkest pixels of the mouth zone (larger = mouth more open)."""
        grey = faces.unflatten(1, (self.frames, 3)).mean(dim=2)
        zone = grey[:, :, MOUTH_ROWS, MOUTH_COLS].flatten(2)
        darkest = zone.topk(max(1, int(zone.shape[-1] * DARK_FRACTION)), dim=-1, largest=False).values
        return -darkest.mean(dim=-1)

    def loudness(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, mel_frames) Wav2Lip mel -> (B, frames): mean log-mel level of each video frame."""
        return audio.mean(dim=(1, 2)) @ self.mel_to_frames.T

    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 15, 48, 96) five BGR crops in [0, 1] -> (B, 5) unit vectors (zero for a still mouth)."""
        return _centred_unit(self.mouth_opening(faces))

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) Wav2Lip-normalised mel -> (B, 5) unit vectors (zero for steady sound)."""
        return _centred_unit(self.loudness(audio))

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(audio), self.embed_faces(faces)
