"""The LR-ASD (IJCV 2025) and Light-ASD (CVPR 2023) active-speaker networks; tensors in, tensors out.

Both were published with MIT-licensed weights whose `state_dict` keys and shapes these modules
reproduce exactly (`model.` the network, `lossAV.FC` / `lossV.FC` its two 128 -> 2 heads), so the
files load unchanged. Their layers, batch-norm settings and fusion follow the authors' code; the
forward passes are written here around one idea: the face encoder is a chain of per-frame steps
(spatial convolutions, pooling) and temporal convolutions (`Step`), run offline over a whole
track or, by `rtdiar.scorers.asd_stream`, one frame at a time.

Inputs as their demo feeds them: faces (B, T, 112, 112) grey 0..255; sound (B, 4T, 13) MFCCs at
100 Hz (python_speech_features of int16-scaled 16 kHz audio). The speaking logit is `lossAV.FC`
output column 1: > 0 reads as speaking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_MEAN, PIXEL_STD = 0.4161, 0.1688  # of the training faces, pixels in [0, 1]
BN_MOMENTUM, BN_EPS = 0.01, 0.001  # every batch norm in both networks
EMBED_DIM = 128


class Step(NamedTuple):
    """One stage of a face encoder, on channels-last frames (oneDNN's fast layout, and each frame one
    contiguous block). `reach` 0: `fn` maps frames (N, H, W, C) each on its own. `reach` p > 0: `fn`
    maps a time-major window (T, N, H, W, C) to its T - 2p outputs, output t reading inputs
    t .. t + 2p (a temporal convolution without padding)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    reach: int = 0


def run_steps(steps: list[Step], frames: torch.Tensor) -> torch.Tensor:
    """Offline: time-major frames (T, N, ...) through the chain, each temporal step's input
    zero-padded by its reach at both ends (what the networks' Conv3d padding does)."""
    x = frames
    for step in steps:
        if step.reach:
            pad = x.new_zeros((step.reach, *x.shape[1:]))
            x = step.fn(torch.cat([pad, x, pad]))
        else:
            x = step.fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])
    return x


def scale_pixels(faces: torch.Tensor) -> torch.Tensor:
    """Grey 0..255 (any dtype) -> the normalised floats both networks were trained on."""
    return (faces.float() / 255 - PIXEL_MEAN) / PIXEL_STD


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


def _bn3d(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


def _conv_bn_relu(conv: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The sound encoders' unit (their batch norms stay modules: the sound side is cheap)."""
    return F.relu(norm(conv(x)))


def _spatial_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, (1, kernel, kernel), (1, stride, stride), (0, kernel // 2, kernel // 2), bias=False)


def _temporal_conv(channels: int, kernel: int) -> nn.Conv3d:
    return nn.Conv3d(channels, channels, (kernel, 1, 1), padding=(kernel // 2, 0, 0), bias=False)


def _folded(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution's weight and a bias with the batch norm after it folded in (its running
    statistics: the face encoders run in eval mode only)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return conv.weight * scale.reshape(-1, 1, 1, 1, 1), norm.bias - norm.running_mean * scale


def _per_frame(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A (1, k, k) Conv3d + batch norm + ReLU as the 2-D convolution it is, on frames (N, H, W, C)."""
    weight, bias = _folded(conv, norm)
    weight = weight.squeeze(2).contiguous(memory_format=torch.channels_last)

    def apply(x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, conv.stride[1:], conv.padding[1:])
        return F.relu_(y).permute(0, 2, 3, 1)  # oneDNN keeps channels last: a view

    return apply


def _over_time(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A (k, 1, 1) Conv3d without padding + batch norm + ReLU on a time-major window (T, N, H, W, C)
    -> (T - k + 1, N, H, W, C'): each tap is one matrix product over a contiguous run of frames,
    accumulated in place."""
    weight, bias = _folded(conv, norm)
    taps = [weight[:, :, tap, 0, 0].t().contiguous() for tap in range(weight.shape[2])]  # each (C, C')

    def apply(x: torch.Tensor) -> torch.Tensor:
        length = x.shape[0] - len(taps) + 1
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        y = torch.addmm(bias, rows[:length].flatten(0, 1), taps[0])
        for tap in range(1, len(taps)):
            y.addmm_(rows[tap:tap + length].flatten(0, 1), taps[tap])
        return F.relu_(y).reshape(length, *x.shape[1:-1], -1)

    return apply


def _pool(x: torch.Tensor) -> torch.Tensor:
    """Each frame's 3x3 max-pool, stride 2 (their MaxPool3d (1, 3, 3))."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)


def _global_max(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N, C): their AdaptiveMaxPool2d((1, 1))."""
    return x.amax(dim=(1, 2))


class _FaceEncoder(nn.Module):
    """Three blocks with max-pools between and a global max at the end, as a `Step` chain."""

    def steps(self) -> list[Step]:
        return [*self.block1.steps(), Step(_pool), *self.block2.steps(), Step(_pool), *self.block3.steps(),
                Step(_global_max)]

    @property
    def receptive_frames(self) -> int:
        """Frames each side of a frame that reach its embedding."""
        return sum(step.reach for step in self.steps())

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W) scaled pixels -> (B, T, 128)."""
        if self.training:
            raise RuntimeError("the face encoder runs in eval mode only (its batch norms are folded): call .eval()")
        frames = faces.transpose(0, 1).unsqueeze(4)  # (T, B, H, W, 1)
        return run_steps(self.steps(), frames).transpose(0, 1)


class _SoundEncoder(nn.Module):
    """Three blocks over (B, C, 13 MFCCs, time), time halved twice, then the mean over MFCCs."""

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 4T, 13) -> (B, T, 128)."""
        x = mfcc.unsqueeze(1).transpose(2, 3)  # (B, 1, 13, 4T)
        x = F.max_pool2d(self.block1(x), (1, 3), (1, 2), (0, 1))
        x = F.max_pool2d(self.block2(x), (1, 3), (1, 2), (0, 1))
        return self.block3(x).mean(dim=2).transpose(1, 2)


# LR-ASD ---------------------------------------------------------------------------------------


class _LRFaceBlock(nn.Module):
    """Two spatial convolutions (5x5 to half the width, then 3x3), then two temporal ones (5 frames,
    then 3): each frame's embedding sees 3 frames each side per block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.s_1 = _spatial_conv(cin, cout // 2, 5, stride)
        self.s_norm_1 = _bn3d(cout // 2)
        self.s_2 = _spatial_conv(cout // 2, cout, 3)
        self.s_norm_2 = _bn3d(cout)
        self.t_1 = _temporal_conv(cout, 5)
        self.t_norm_1 = _bn3d(cout)
        self.t_2 = _temporal_conv(cout, 3)
        self.t_norm_2 = _bn3d(cout)

    def steps(self) -> list[Step]:
        first, second = _per_frame(self.s_1, self.s_norm_1), _per_frame(self.s_2, self.s_norm_2)
        return [Step(lambda x: second(first(x))),
                Step(_over_time(self.t_1, self.t_norm_1), reach=2),
                Step(_over_time(self.t_2, self.t_norm_2), reach=1)]


class _LRFaceEncoder(_FaceEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = _LRFaceBlock(1, 32, stride=2)
        self.block2 = _LRFaceBlock(32, 64)
        self.block3 = _LRFaceBlock(64, 128)


class _LRSoundBlock(nn.Module):
    """Along the MFCCs (5, then 3), then along time (5, then 3)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.m_1 = nn.Conv2d(cin, cout // 2, (5, 1), padding=(2, 0), bias=False)
        self.m_norm_1 = _bn2d(cout // 2)
        self.m_2 = nn.Conv2d(cout // 2, cout, (3, 1), padding=(1, 0), bias=False)
        self.m_norm_2 = _bn2d(cout)
        self.t_1 = nn.Conv2d(cout, cout, (1, 5), padding=(0, 2), bias=False)
        self.t_norm_1 = _bn2d(cout)
        self.t_2 = nn.Conv2d(cout, cout, (1, 3), padding=(0, 1), bias=False)
        self.t_norm_2 = _bn2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_bn_relu(self.m_2, self.m_norm_2, _conv_bn_relu(self.m_1, self.m_norm_1, x))
        return _conv_bn_relu(self.t_2, self.t_norm_2, _conv_bn_relu(self.t_1, self.t_norm_1, x))


class _LRSoundEncoder(_SoundEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = _LRSoundBlock(1, 32)
        self.block2 = _LRSoundBlock(32, 64)
        self.block3 = _LRSoundBlock(64, 128)


class _AttentionFusion(nn.Module):
    """Concatenate two (B, T, C) sequences and gate every channel by a sigmoid of a 1x1 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = nn.Conv1d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm1d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        x = torch.cat([first, second], dim=2).transpose(1, 2)
        return (x * torch.sigmoid(self.bn(self.attention(x)))).transpose(1, 2)


class _LRDetector(nn.Module):
    """A forward and a backward GRU over the same (dropped-out) input, fused by attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru_forward = nn.GRU(channels, channels // 4, batch_first=True)
        self.gru_backward = nn.GRU(channels, channels // 4, batch_first=True)
        self.drop = nn.Dropout(0.5)
        self.attention = _AttentionFusion(channels // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ahead, _ = self.gru_forward(self.drop(x))
        behind, _ = self.gru_backward(self.drop(x.flip(1)))
        return self.attention(ahead, behind.flip(1))


class _LRASDNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visualEncoder = _LRFaceEncoder()
        self.audioEncoder = _LRSoundEncoder()
        self.fusion = _AttentionFusion(2 * EMBED_DIM)
        self.detector = _LRDetector(2 * EMBED_DIM)

    def backend(self, audio_emb: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
        return self.detector(self.fusion(audio_emb, visual_emb))


# Light-ASD ------------------------------------------------------------------------------------


class _LightFaceBlock(nn.Module):
    """Two branches, 3x3 then 3 frames and 5x5 then 5 frames, summed and mixed by a 1x1x1
    convolution: each frame's embedding sees 2 frames each side per block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.s_3 = _spatial_conv(cin, cout, 3, stride)
        self.bn_s_3 = _bn3d(cout)
        self.t_3 = _temporal_conv(cout, 3)
        self.bn_t_3 = _bn3d(cout)
        self.s_5 = _spatial_conv(cin, cout, 5, stride)
        self.bn_s_5 = _bn3d(cout)
        self.t_5 = _temporal_conv(cout, 5)
        self.bn_t_5 = _bn3d(cout)
        self.last = nn.Conv3d(cout, cout, 1, bias=False)
        self.bn_last = _bn3d(cout)

    def steps(self) -> list[Step]:
        s3, s5 = _per_frame(self.s_3, self.bn_s_3), _per_frame(self.s_5, self.bn_s_5)
        t3, t5 = _over_time(self.t_3, self.bn_t_3), _over_time(self.t_5, self.bn_t_5)

        def temporal(x: torch.Tensor) -> torch.Tensor:
            """Window (T, N, H, W, 2C) -> (T - 4, N, H, W, C); the 3-frame branch reads the inner T - 2."""
            channels = x.shape[-1] // 2
            return t3(x[1:-1, ..., :channels]) + t5(x[..., channels:])

        # the spatial step keeps both branches, concatenated on channels, for the one temporal step
        return [Step(lambda x: torch.cat([s3(x), s5(x)], dim=-1)), Step(temporal, reach=2),
                Step(_per_frame(self.last, self.bn_last))]


class _LightFaceEncoder(_FaceEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = _LightFaceBlock(1, 32, stride=2)
        self.block2 = _LightFaceBlock(32, 64)
        self.block3 = _LightFaceBlock(64, 128)


class _LightSoundBlock(nn.Module):
    """Two branches, 3 MFCCs then 3 steps and 5 then 5, summed and mixed by a 1x1 convolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.m_3 = nn.Conv2d(cin, cout, (3, 1), padding=(1, 0), bias=False)
        self.bn_m_3 = _bn2d(cout)
        self.t_3 = nn.Conv2d(cout, cout, (1, 3), padding=(0, 1), bias=False)
        self.bn_t_3 = _bn2d(cout)
        self.m_5 = nn.Conv2d(cin, cout, (5, 1), padding=(2, 0), bias=False)
        self.bn_m_5 = _bn2d(cout)
        self.t_5 = nn.Conv2d(cout, cout, (1, 5), padding=(0, 2), bias=False)
        self.bn_t_5 = _bn2d(cout)
        self.last = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_last = _bn2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = _conv_bn_relu(self.t_3, self.bn_t_3, _conv_bn_relu(self.m_3, self.bn_m_3, x))
        x5 = _conv_bn_relu(self.t_5, self.bn_t_5, _conv_bn_relu(self.m_5, self.bn_m_5, x))
        return _conv_bn_relu(self.last, self.bn_last, x3 + x5)


class _LightSoundEncoder(_SoundEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = _LightSoundBlock(1, 32)
        self.block2 = _LightSoundBlock(32, 64)
        self.block3 = _LightSoundBlock(64, 128)


class _BGRU(nn.Module):
    """A forward GRU, GELU, a backward GRU over its output, GELU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru_forward = nn.GRU(channels, channels, batch_first=True)
        self.gru_backward = nn.GRU(channels, channels, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.gru_forward(x)
        x, _ = self.gru_backward(F.gelu(x).flip(1))
        return F.gelu(x.flip(1))


class _LightASDNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visualEncoder = _LightFaceEncoder()
        self.audioEncoder = _LightSoundEncoder()
        self.GRU = _BGRU(EMBED_DIM)

    def backend(self, audio_emb: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
        return self.GRU(audio_emb + visual_emb)


# The two published networks --------------------------------------------------------------------


class _Head(nn.Module):
    """A 128 -> 2 classifier (not speaking, speaking) under the name the files give it."""

    def __init__(self) -> None:
        super().__init__()
        self.FC = nn.Linear(EMBED_DIM, 2)


class _ActiveSpeakerNet(nn.Module):
    """Front ends, back end and speaking logit shared by both networks; `model` is the network."""

    model: _LRASDNet | _LightASDNet

    def _add_heads(self) -> None:
        self.lossAV = _Head()  # audio-visual: the speaking score
        self.lossV = _Head()  # visual only: a training aid, kept so the files load key for key

    @property
    def visual_encoder(self) -> _FaceEncoder:
        """The face encoder (scaled pixels in), with its `steps()` for streaming."""
        return self.model.visualEncoder

    def visual_frontend(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, T, 112, 112) grey 0..255 -> (B, T, 128)."""
        return self.model.visualEncoder(scale_pixels(faces))

    def audio_frontend(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 4T, 13) MFCCs at 100 Hz -> (B, T, 128)."""
        return self.model.audioEncoder(mfcc.float())

    def backend(self, audio_emb: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
        """(B, T, 128) each -> (B, T, 128), each frame seeing the whole sequence."""
        return self.model.backend(audio_emb, visual_emb)

    def speaking_logits(self, audio_emb: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
        """(B, T): the speaking logit of each frame (> 0 reads as speaking)."""
        return self.lossAV.FC(self.backend(audio_emb, visual_emb))[..., 1]

    def forward(self, mfcc: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """(B, 4T, 13) MFCCs and (B, T, 112, 112) faces -> (B, T) speaking logits."""
        return self.speaking_logits(self.audio_frontend(mfcc), self.visual_frontend(faces))


class LRASD(_ActiveSpeakerNet):
    """LR-ASD (Liao et al., IJCV 2025): attention fusion, then attention over a forward and a backward GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _LRASDNet()
        self._add_heads()


class LightASD(_ActiveSpeakerNet):
    """Light-ASD (Liao et al., CVPR 2023): sound + face, then a forward and a backward GRU with GELUs."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _LightASDNet()
        self._add_heads()
