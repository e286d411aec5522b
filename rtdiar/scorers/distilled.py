"""rtdiar's own compact judgement, for machines without LR-ASD: distilled from it, trained here from scratch.

The same shape as the active-speaker networks (`asd.py`), so the live path streams it unchanged:
a face front end (each frame's grey face -> 128-d), a sound front end (each frame's 4 MFCC rows ->
128-d), a back end that reads both over the trailing window and gives a speaking logit per frame,
and rtdiar's sync head (`sync_head.py`) on the same front ends, fused with that logit by
`FusedScorer`. Everything is causal: the face encoder sees one frame, the sound encoder and the back
end only the past, so the live score of a frame is the score of that frame, with no delay.

Trained (`rtdiar.lab.distillation`) on LR-ASD's speaking logits as soft targets for each face with its
own sound, zero for faces laid on another clip's sound (talking on mute), and the sync objective on
the head; it holds no LR-ASD weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtdiar.scorers.asd import EMBED_DIM, Step, scale_pixels
from rtdiar.scorers.sync_head import SyncHead
from rtdiar.windows import MFCC_PER_FRAME

MFCC_CEPSTRA = 13


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FaceEncoder(nn.Module):
    """One 112 x 112 grey face -> 128-d, frame by frame (no temporal reach: the back end reads motion),
    at half resolution: the mouth's opening and shape need no more, and it keeps training on a CPU."""

    receptive_frames = 0

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AvgPool2d(2), nn.Conv2d(1, widths[0], 5, 2, 2, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]  # 28 x 28
        for cin, cout in zip(widths, widths[1:]):  # 14, 7, 4
            layers += _conv_bn_relu(cin, cout, 2) + _conv_bn_relu(cout, cout, 1)
        self.convs = nn.Sequential(*layers)
        self.project = nn.Linear(widths[-1], EMBED_DIM)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) scaled pixels -> (N, 128)."""
        return self.project(self.convs(frames).amax(dim=(2, 3)))

    def steps(self) -> list[Step]:
        """The live face stream's chain (`asd_stream`): one per-frame step on channels-last frames."""
        return [Step(lambda x: self.embed(x.permute(0, 3, 1, 2)))]

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W) scaled pixels -> (B, T, 128)."""
        return self.embed(faces.flatten(0, 1)[:, None]).unflatten(0, faces.shape[:2])


class _CausalConv(nn.Module):
    """A temporal convolution that reads only the past: output t sees inputs t - k + 1 .. t."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.pad = kernel - 1
        self.conv = nn.Conv1d(cin, cout, kernel, bias=False)
        self.norm = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(F.pad(x, (self.pad, 0)))))


class SoundEncoder(nn.Module):
    """(B, 4T, 13) MFCCs -> (B, T, 128): each frame's four rows, then two causal convolutions over frames."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(MFCC_PER_FRAME * MFCC_CEPSTRA)
        self.convs = nn.Sequential(_CausalConv(MFCC_PER_FRAME * MFCC_CEPSTRA, width, 3), _CausalConv(width, width, 3),
                                   _CausalConv(width, EMBED_DIM, 3))

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        frames = mfcc.float().reshape(mfcc.shape[0], -1, MFCC_PER_FRAME * MFCC_CEPSTRA).transpose(1, 2)
        return self.convs(self.norm(frames)).transpose(1, 2)


class DistilledASD(nn.Module):
    """Face and sound front ends, a forward GRU back end, and the sync head on the front ends."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.face = FaceEncoder()
        self.sound = SoundEncoder()
        self.mix = nn.Sequential(nn.LayerNorm(2 * EMBED_DIM), nn.Linear(2 * EMBED_DIM, hidden), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)
        self.head = SyncHead()

    @property
    def visual_encoder(self) -> FaceEncoder:
        return self.face

    def visual_frontend(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, T, 112, 112) grey 0..255 -> (B, T, 128)."""
        return self.face(scale_pixels(faces))

    def audio_frontend(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 4T, 13) MFCCs at 100 Hz -> (B, T, 128)."""
        return self.sound(mfcc)

    def speaking_logits(self, audio_emb: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
        """(B, T, 128) each -> (B, T): each frame's logit from the frames up to it."""
        hidden, _ = self.gru(self.mix(torch.cat([audio_emb, visual_emb], dim=-1)))
        return self.out(hidden)[..., 0]

    def forward(self, mfcc: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """(B, 4T, 13) MFCCs and (B, T, 112, 112) faces -> (B, T) speaking logits."""
        return self.speaking_logits(self.audio_frontend(mfcc), self.visual_frontend(faces))
