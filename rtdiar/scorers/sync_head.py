"""rtdiar's sync head: does this face move with *this* sound, judged on an active-speaker model's front ends.

LR-ASD's front ends were shaped by thousands of AVA faces, but its back end asks "is this face
talking?", not "is it talking this sound": a face talking on mute looks like a speaker to it. The
head is two small temporal towers, trained here from scratch (`rtdiar.lab.sync_training`), one over
the last `frames` face embeddings and one over the same frames' sound embeddings; their unit outputs'
dot product is the sync score, measured against off-sync pairings like every sync model's
(`rtdiar.cohort`). `fusion` weighs the active-speaker logit and that sync evidence into one logit,
fitted on dev people; the file holds both, the front ends come from the downloaded model at run time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtdiar.scorers.asd import EMBED_DIM


class _Tower(nn.Module):
    """(B, frames, 128) front-end embeddings -> (B, dim) unit vectors; order in time matters (no pooling)."""

    def __init__(self, frames: int, width: int, dim: int) -> None:
        super().__init__()
        self.frames = frames
        self.norm = nn.LayerNorm(EMBED_DIM)
        self.convs = nn.Sequential(nn.Conv1d(EMBED_DIM, width, 3), nn.BatchNorm1d(width), nn.ReLU(),
                                   nn.Conv1d(width, width, 3), nn.BatchNorm1d(width), nn.ReLU())
        self.project = nn.Linear(width * (frames - 4), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequence(x)[:, 0]

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, 128) -> (B, L - frames + 1, dim): every window of the sequence, its convolutions run once."""
        maps = self.convs(self.norm(x).transpose(1, 2))  # (B, width, L - 4)
        windows = maps.unfold(2, self.frames - 4, 1).transpose(1, 2)  # (B, P, width, frames - 4)
        return F.normalize(self.project(windows.flatten(2)), dim=-1)


class SyncHead(nn.Module):
    """The face and sound towers, the training temperature, and the fusion weights
    (active-speaker logit, relative sync score, bias) -> one speaking logit."""

    def __init__(self, frames: int = 15, width: int = 256, dim: int = 128) -> None:
        super().__init__()
        self.frames = frames
        self.face = _Tower(frames, width, dim)
        self.sound = _Tower(frames, width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's start
        self.register_buffer("fusion", torch.tensor([1.0, 0.0, 0.0]))

    def fused_logit(self, asd_logit: torch.Tensor, sync: torch.Tensor) -> torch.Tensor:
        weight_asd, weight_sync, bias = self.fusion
        return weight_asd * asd_logit + weight_sync * sync + bias


MEMBERS = 2  # the fused judgements a `JointFusion` weighs


class JointFusion(nn.Module):
    """Two fused judgements in one (`rtdiar.scorers.joint`): a weight for each member's speaking logit
    and relative sync score, then a bias; the file names its members, whose own files hold the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(2 * MEMBERS + 1), requires_grad=False)  # fitted, not trained

    def fused_logit(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2 * MEMBERS) features, the members' in order -> (N,) logits (> 0 reads as talking this sound)."""
        return features @ self.weights[:-1] + self.weights[-1]
