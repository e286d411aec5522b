"""Runs a SyncNet on windows: packs crops and mel into tensors, batches, moves them to the device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtdiar.config import ModelConfig
from rtdiar.errors import RtdiarError
from rtdiar.model import build_model, load_weights, weights_arch

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


def pack_faces(crops: torch.Tensor) -> torch.Tensor:
    """(N, 5, 48, 96, 3) uint8 BGR -> (N, 15, 48, 96) float in [0, 1]: as Wav2Lip, the 5 frames
    concatenated on the channel axis. Training packs with this too, so both see the same tensor."""
    n, frames, height, width, colours = crops.shape
    stacked = crops.permute(0, 1, 4, 2, 3).reshape(n, frames * colours, height, width)
    return stacked.float() / 255.0


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

    def face_embeddings(self, windows: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, 5, 48, 96, 3) uint8 crops -> (N, D) float32 unit vectors, for scoring many pairings at once
        (offset search, evaluation): the cosine of two embeddings is what `score` returns."""
        with torch.inference_mode():
            parts = [self.model.embed_faces(self._pack_faces(windows[i:i + batch])).float().cpu()
                     for i in range(0, len(windows), batch)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)

    def audio_embeddings(self, mels: np.ndarray, batch: int = 1024) -> np.ndarray:
        """(M, 80, 16) mel windows -> (M, D) float32 unit vectors."""
        with torch.inference_mode():
            parts = [self.model.embed_audio(self._pack_mels(mels[i:i + batch])).float().cpu()
                     for i in range(0, len(mels), batch)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)

    def _pack_faces(self, windows: np.ndarray) -> torch.Tensor:
        # the uint8 crops go to the device as they are (4x less to copy) and become float there
        return pack_faces(torch.from_numpy(np.ascontiguousarray(windows)).to(self.device))

    def _pack_mel(self, mel: np.ndarray) -> torch.Tensor:
        return self._pack_mels(mel[None])

    def _pack_mels(self, mels: np.ndarray) -> torch.Tensor:
        mel32 = np.ascontiguousarray(mels, dtype=np.float32)
        return torch.from_numpy(mel32).to(self.device).reshape(-1, 1, *MEL_SHAPE)


def load_scorer(cfg: ModelConfig) -> SyncScorer:
    """The configured network with its weights, on the configured device, ready to score.

    Arch `auto` takes the architecture an rtdiar weights file names, else Wav2Lip's (whose
    checkpoint names none).
    """
    device = resolve_device(cfg.device)
    path = cfg.weights_path()
    arch = cfg.arch
    if arch == "auto":
        arch = (weights_arch(path) if path.exists() else None) or "wav2lip"
    model = build_model(arch)
    if not any(True for _ in model.parameters()):
        return SyncScorer(model, device)  # a training-free scorer has nothing to load
    if not path.exists():
        raise RtdiarError(f"no weights at {path}: pass --weights FILE (an rtdiar .safetensors or Wav2Lip's lipsync_expert.pth)")
    load_weights(model, path)
    return SyncScorer(model, device)
