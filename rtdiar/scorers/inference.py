"""Runs a SyncNet on windows: packs crops and mel into tensors, batches, runs the towers in torch or ONNX Runtime."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtdiar.config import ASD_ARCHS, Config, load_config
from rtdiar.errors import RtdiarError
from rtdiar.lips import LIPS_SHAPE
from rtdiar.scorers.base import FrameScores, Scorer, ScorerNeeds, TrackWindow
from rtdiar.scorers.syncnet import build_model, face_inputs, load_weights
from rtdiar.scorers.onnx_backend import OnnxTowers  # light: onnxruntime itself is imported when a session is made
from rtdiar.tracking import crop_mouth_region

WINDOW_SHAPE = (5, 48, 96, 3)  # frames, height, width, BGR
LIPS_WINDOW_SHAPE = (5, *LIPS_SHAPE)  # frames, lip points, x y
MEL_SHAPE = (80, 16)  # mel bands, 80 Hz frames (0.2 s)
RUNTIMES = ("auto", "torch", "onnx")
FUSED_ARCHS = ("sync_head", "distilled")  # a speaking logit fused with rtdiar's sync head (`scorers/fused.py`)


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


def resolve_runtime(name: str, device: torch.device, trained: bool) -> str:
    """`torch` or `onnx` for the configured runtime on `device`.

    `auto` takes ONNX Runtime for a learned model on the CPU (faster there) and eager torch on CUDA
    (this onnxruntime is the CPU build). The parameter-free baseline always runs in torch: it has no
    weights to speed up, and its graph does not export with a free batch size.
    """
    if name not in RUNTIMES:
        raise RtdiarError(f"unknown runtime '{name}' (auto, torch or onnx)")
    if name == "onnx" and device.type != "cpu":
        raise RtdiarError(f"runtime onnx runs on the CPU only (this onnxruntime is the CPU build): "
                          f"use --runtime torch on {device.type.upper()}, or --device cpu")
    if not trained:
        return "torch"
    if name == "auto":
        return "onnx" if device.type == "cpu" else "torch"
    return name


def pack_faces(crops: torch.Tensor) -> torch.Tensor:
    """(N, 5, 48, 96, 3) uint8 BGR -> (N, 15, 48, 96) float in [0, 1]: as Wav2Lip, the 5 frames
    concatenated on the channel axis. Training packs with this too, so both see the same tensor."""
    n, frames, height, width, colours = crops.shape
    stacked = crops.permute(0, 1, 4, 2, 3).reshape(n, frames * colours, height, width)
    return stacked.float() / 255.0


class FaceTower(nn.Module):
    """The model's face inputs ((N, 5, 48, 96, 3) uint8 crops and/or (N, 5, 42, 2) lip points, in
    `face_inputs` order) -> (N, D) embeddings: packing and face tower as one module, so torch runs it
    and ONNX Runtime runs its export from the same code."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs = face_inputs(model)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        packed = (pack_faces(x) if name == "crops" else x for name, x in zip(self.inputs, inputs))
        return self.model.embed_faces(*packed)


class AudioTower(nn.Module):
    """(M, 80, 16) mel windows -> (M, D) embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        return self.model.embed_audio(mels.unsqueeze(1))


class TorchTowers:
    """The towers run eagerly by torch on `device`: numpy in, (N, D) float32 embeddings out."""

    def __init__(self, face_tower: nn.Module, audio_tower: nn.Module, device: torch.device) -> None:
        self._face_tower, self._audio_tower, self._device = face_tower, audio_tower, device

    def faces(self, *inputs: np.ndarray) -> np.ndarray:
        # the uint8 crops go to the device as they are (4x less to copy) and become float there
        return self._run(self._face_tower, *inputs)

    def audio(self, mels: np.ndarray) -> np.ndarray:
        return self._run(self._audio_tower, mels)

    def _run(self, tower: nn.Module, *inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return tower(*(torch.from_numpy(x).to(self._device) for x in inputs)).float().cpu().numpy()


FACE_EXAMPLES = {"crops": torch.zeros((2, *WINDOW_SHAPE), dtype=torch.uint8), "lips": torch.zeros((2, *LIPS_WINDOW_SHAPE))}


def onnx_towers(face_tower: FaceTower, audio_tower: nn.Module) -> OnnxTowers:
    """The towers exported to ONNX Runtime sessions on the CPU, with torch's thread budget."""
    faces = {name: FACE_EXAMPLES[name] for name in face_tower.inputs}
    return OnnxTowers(face_tower, audio_tower, faces, torch.zeros((2, *MEL_SHAPE)), threads=torch.get_num_threads())


def sync_needs(config: Config, lips: bool) -> ScorerNeeds:
    """A SyncNet's input, as Wav2Lip trained it: 5 lower-face BGR crops and the 16 mel frames (0.2 s)
    of the same window (with the window's lip points for a model that reads them)."""
    crop = functools.partial(crop_mouth_region, cfg=config.tracker, size_px=config.window.crop_px)
    return ScorerNeeds(crop=crop, frames=config.window.frames, audio="mel", audio_frames=config.window.frames, lips=lips)


class EmbeddingScorer:
    """`Scorer.score_frame` for a model that embeds face windows and a sound window as unit vectors
    (`embed`): each raw score is their cosine, and the embeddings go to the off-sync cohort."""

    family = "sync"
    needs: ScorerNeeds

    def embed(self, windows: np.ndarray, mel: np.ndarray, lips: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def score_frame(self, step: int, tracks: list[TrackWindow], audio: np.ndarray) -> FrameScores:
        windows = np.stack([track.crops for track in tracks]) if tracks else np.zeros((0, *WINDOW_SHAPE), np.uint8)
        lips = np.stack([track.lips for track in tracks]) if self.needs.lips and tracks else None
        faces, audio_emb = self.embed(windows, audio, lips)
        by_track = {track.id: face for track, face in zip(tracks, faces)}
        return FrameScores({tid: float(face @ audio_emb) for tid, face in by_track.items()}, by_track, audio_emb)

    def forget(self, track_id: int) -> None:
        """Windows are scored alone: nothing is kept per track."""


class SyncScorer(EmbeddingScorer):
    """Sync score of every face window against one mel window: one audio pass, one batch of faces.

    Validation, packing into contiguous arrays, batching and the cosine are the same whatever the
    runtime; only the tower calls differ (eager torch, or ONNX Runtime on the CPU).
    """

    def __init__(self, model: nn.Module, device: torch.device, runtime: str = "torch", config: Config | None = None) -> None:
        # the model needs embed_audio / embed_faces (SyncNetColor and its variants)
        self.device = device
        self.runtime = runtime
        self.model = model.to(device).eval()
        # the towers are put in eval mode themselves: the ONNX exporter restores each module's own
        # training flag afterwards, and a wrapper left in training mode would switch the model's batch norm on
        face_tower, audio_tower = FaceTower(self.model).eval(), AudioTower(self.model).eval()
        self._inputs = face_tower.inputs
        if runtime == "torch":
            self._towers = TorchTowers(face_tower, audio_tower, device)
        elif runtime == "onnx":
            self._towers = onnx_towers(face_tower, audio_tower)
        else:
            raise ValueError(f"runtime must be torch or onnx, got {runtime!r}")
        self.needs = sync_needs(config or load_config(), self.needs_lips)

    @property
    def needs_lips(self) -> bool:
        """Whether the model reads lip points (`rtdiar.lips`): then every window needs them."""
        return "lips" in self._inputs

    def score(self, windows: np.ndarray, mel: np.ndarray, lips: np.ndarray | None = None) -> np.ndarray:
        """(N, 5, 48, 96, 3) uint8 BGR crops in time order (with their (N, 5, 42, 2) lip points when the
        model reads them) and an (80, 16) mel -> (N,) float32 cosine similarities."""
        face_emb, audio_emb = self.embed(windows, mel, lips)
        return F.cosine_similarity(torch.from_numpy(face_emb), torch.from_numpy(audio_emb[None]), dim=1).numpy()

    def embed(self, windows: np.ndarray, mel: np.ndarray, lips: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The inputs of `score` -> their (N, D) face and (D,) audio unit vectors, whose dot products
        are the scores; the audio is embedded even with no window (`rtdiar.cohort` keeps it)."""
        self._check(windows, mel)
        audio_emb = self._towers.audio(_mels(mel[None]))[0]
        face_emb = (self._towers.faces(*self._face_arrays(windows, lips)) if len(windows)
                    else np.zeros((0, len(audio_emb)), np.float32))
        return face_emb, audio_emb

    @staticmethod
    def _check(windows: np.ndarray, mel: np.ndarray) -> None:
        if windows.ndim != 5 or windows.shape[1:] != WINDOW_SHAPE or windows.dtype != np.uint8:
            raise ValueError(f"windows must be uint8 (N, 5, 48, 96, 3), got {windows.dtype} {windows.shape}")
        if mel.shape != MEL_SHAPE:
            raise ValueError(f"mel must be (80, 16), got {mel.shape}")

    def face_embeddings(self, windows: np.ndarray, lips: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
        """(N, 5, 48, 96, 3) uint8 crops (and their lip points, as `score`) -> (N, D) float32 unit vectors,
        for scoring many pairings at once (offset search, evaluation): the cosine of two embeddings is
        what `score` returns."""
        return _batched(lambda part, points: self._towers.faces(*self._face_arrays(part, points)), batch, windows, lips)

    def _face_arrays(self, windows: np.ndarray, lips: np.ndarray | None) -> list[np.ndarray]:
        """The face tower's inputs in its order, contiguous (a strided view is copied one batch at a time)."""
        if self.needs_lips:
            if lips is None or lips.shape != (len(windows), *LIPS_WINDOW_SHAPE):
                got = "none" if lips is None else str(lips.shape)
                raise ValueError(f"model '{getattr(self.model, 'arch', '?')}' reads lip points: lips must be "
                                 f"(N, 5, 42, 2) beside the (N, ...) windows, got {got}")
            lips = np.ascontiguousarray(lips, dtype=np.float32)
        named = {"crops": windows, "lips": lips}
        return [np.ascontiguousarray(named[name]) for name in self._inputs]

    def audio_embeddings(self, mels: np.ndarray, batch: int = 1024) -> np.ndarray:
        """(M, 80, 16) mel windows -> (M, D) float32 unit vectors."""
        return _batched(lambda part: self._towers.audio(_mels(part)), batch, mels)


def _mels(mels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mels, dtype=np.float32)


def _batched(embed: Callable[..., np.ndarray], batch: int, *items: np.ndarray | None) -> np.ndarray:
    """`embed` over the aligned `items` (None passed as it is) `batch` rows at a time (a strided view
    is copied one batch at a time, never whole)."""
    parts = [embed(*(None if x is None else x[i:i + batch] for x in items)) for i in range(0, len(items[0]), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _fused_scorer(model: nn.Module, metadata: dict[str, str], device: torch.device, config: Config,
                  runtime: str) -> Scorer:
    """rtdiar's sync head fused with a speaking logit: the head on the front ends of the downloaded
    model its file names (rtdiar-lrasd), or a network that is its own front ends and holds its head
    (rtdiar-distilled)."""
    from rtdiar.scorers.fused import FusedScorer
    from rtdiar.scorers.registry import MODELS, resolve

    if "frontends" in metadata:
        frontends = MODELS[metadata["frontends"]]
        net, head = build_model(frontends.arch), model
        load_weights(net, resolve(frontends.name))  # one line naming the download when it is not here
    else:
        net, head = model, model.head
    low, high = (int(v) for v in metadata["cohort_shifts"].split(","))
    return FusedScorer(net, head, device, config, range(low, high + 1), runtime)


def _joint_scorer(fusion: nn.Module, metadata: dict[str, str], config: Config) -> Scorer:
    """Two fused judgements in one: each member (its file named by the joint file) loaded as it runs alone."""
    from rtdiar.scorers.joint import JointScorer

    members = [load_scorer(dataclasses.replace(config, model=dataclasses.replace(config.model, weights=name, arch="auto")))
               for name in metadata["members"].split(",")]
    return JointScorer(fusion, members)


def load_scorer(config: Config) -> Scorer:
    """The configured network with its weights, on the configured device and runtime, ready to score.

    Arch `auto` takes the architecture the weights file names (`ModelConfig.named_arch`), else Wav2Lip's.
    """
    cfg = config.model
    device = resolve_device(cfg.device)
    path = cfg.weights_path()
    arch = cfg.named_arch() or "wav2lip"
    model = build_model(arch)
    trained = any(True for _ in model.parameters())  # a training-free scorer has nothing to load
    runtime = resolve_runtime(cfg.runtime, device, trained)
    metadata: dict[str, str] = {}
    if trained:
        if not path.exists():
            raise RtdiarError(f"no weights at {path}: pass --weights NAME|FILE (`rtdiar weights` lists the known models)")
        metadata = load_weights(model, path)
    if arch in FUSED_ARCHS:
        return _fused_scorer(model, metadata, device, config, runtime)
    if arch == "joint":
        return _joint_scorer(model, metadata, config)
    if arch in ASD_ARCHS:
        from rtdiar.scorers.active_speaker import ActiveSpeakerScorer

        return ActiveSpeakerScorer(model, device, config, runtime)
    return SyncScorer(model, device, runtime, config)
