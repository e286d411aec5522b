"""Runs a SyncNet on windows: packs crops and mel into tensors, batches, moves them to the device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtdiar.config import ModelConfig
from rtdiar.errors import RtdiarError
from rtdiar.model import build_model, load_weights

WINDOW_SHAPE = (5, 48, 96, 3)  # frames, height, width, BGR
MEL_SHAPE = (80, 16)  # mel bands, 80 Hz frames (0.2 s)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when there is one; asking for CUDA without it is the user's error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RtdiarError(f"device '{name}' asked for, but this torch sees no CUDA GPU; use --device cpu")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise RtdiarError(f"bad device name '{name}' (auto, cpu, cuda or cuda:N)") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RtdiarError(f"device '{name}' asked for, but there are {torch.cuda.device_count()} CUDA GPUs")
        return device
    raise RtdiarError(f"unknown device '{name}' (auto, cpu, cuda or cuda:N)")


class SyncScorer:
    """Sync score of every face window against one mel window: one audio pass, one batch of faces."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        # the model needs embed_audio / embed_faces (SyncNetColor and its variants)
        self.device = device
        self.model = model.to(device).eval()

    def score(self, windows: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """(N, 5, 48, 96, 3) uint8 BGR crops in time order and an (80, 16) mel -> (N,) float32 cosine similarities."""
        if windows.ndim != 5 or windows.shape[1:] != WINDOW_SHAPE or windows.dtype != np.uint8:
            raise ValueError(f"windows must be uint8 (N, 5, 48, 96, 3), got {windows.dtype} {windows.shape}")
        if mel.shape != MEL_SHAPE:
            raise ValueError(f"mel must be (80, 16), got {mel.shape}")
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            audio_emb = self.model.embed_audio(self._pack_mel(mel))
            face_emb = self.model.embed_faces(self._pack_faces(windows))
            scores = F.cosine_similarity(face_emb, audio_emb, dim=1)
        return scores.float().cpu().numpy()

    def _pack_faces(self, windows: np.ndarray) -> torch.Tensor:
        """As Wav2Lip: the 5 BGR frames concatenated on the channel axis (15 x 48 x 96), scaled to [0, 1].

        The uint8 crops go to the device as they are (4x less to copy) and become float there.
        """
        crops = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device)
        n, frames, height, width, colours = crops.shape
        stacked = crops.permute(0, 1, 4, 2, 3).reshape(n, frames * colours, height, width)
        return stacked.float() / 255.0

    def _pack_mel(self, mel: np.ndarray) -> torch.Tensor:
        mel32 = np.ascontiguousarray(mel, dtype=np.float32)
        return torch.from_numpy(mel32).to(self.device).reshape(1, 1, *MEL_SHAPE)


def load_scorer(cfg: ModelConfig) -> SyncScorer:
    """The configured network with its weights, on the configured device, ready to score."""
    path = cfg.weights_path()
    if not path.exists():
        raise RtdiarError(
            f"no weights installed at {path}: rtdiar's own trained weights do not ship yet; "
            "pass --weights FILE (Wav2Lip's lipsync_expert.pth or an rtdiar .safetensors)"
        )
    device = resolve_device(cfg.device)
    model = build_model(cfg.arch)
    load_weights(model, path)
    return SyncScorer(model, device)
