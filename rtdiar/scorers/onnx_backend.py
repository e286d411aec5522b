"""ONNX Runtime on the CPU for a loaded network's parts: exported in memory, run by sessions.

On 2 CPU cores ONNX Runtime scores 1-8 faces with the compact model 1.5-3x faster than eager torch
(batch norm folded into the convolutions, no per-op dispatch), which the live goal needs; the same
holds for each part of `rtdiar-distilled` (face encoder, sound encoder, GRU back end, sync towers).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from rtdiar.scorers.asd import EMBED_DIM, Step


def export_onnx(tower: nn.Module, examples: dict[str, torch.Tensor], free_time: bool = False) -> bytes:
    """The tower as an ONNX graph with a free batch axis (and time, axis 1, where `free_time`), its
    inputs named and ordered as `examples`, built in memory (a fraction of a second for the compact
    models, so nothing is cached on disk)."""
    buffer = io.BytesIO()
    free = {0: "batch", 1: "time"} if free_time else {0: "batch"}
    axes = {name: free for name in [*examples, "embeddings"]}
    with warnings.catch_warnings():  # the tracer's and the legacy exporter's notes mean nothing to a user
        warnings.simplefilter("ignore")
        torch.onnx.export(tower, tuple(examples.values()), buffer, input_names=list(examples),
                          output_names=["embeddings"], dynamic_axes=axes, dynamo=False)
    return buffer.getvalue()


def cpu_session(graph: bytes, threads: int):
    """A CPU session using `threads` cores, the budget torch was given (torch.get_num_threads()), so
    switching runtime never changes how much of the machine the model takes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle workers sleep instead of spinning: spinning ORT threads fight the engine's other threads
    # (torch's VAD, the detector) for the 2 cores, and measured slower on 2 cores, not faster
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the CLI prints nothing extra
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class OnnxTowers:
    """The face and audio towers as ONNX Runtime sessions: numpy in, (N, D) float32 embeddings out.

    The face tower takes its inputs in the order of `face_examples` (crops, lip points or both)."""

    def __init__(self, face_tower: nn.Module, audio_tower: nn.Module, face_examples: dict[str, torch.Tensor],
                 audio_example: torch.Tensor, threads: int) -> None:
        self._face_names = list(face_examples)
        self._faces = cpu_session(export_onnx(face_tower, face_examples), threads)
        self._audio = cpu_session(export_onnx(audio_tower, {"mels": audio_example}), threads)

    def faces(self, *inputs: np.ndarray) -> np.ndarray:
        return self._faces.run(None, dict(zip(self._face_names, inputs)))[0]

    def audio(self, mels: np.ndarray) -> np.ndarray:
        return self._audio.run(None, {"mels": mels})[0]


class _Method(nn.Module):
    """`net.name(*inputs)` as a module, for the exporter."""

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__()
        self.net, self.name = net, name

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.name)(*inputs)


class _FaceChain(nn.Module):
    """A per-frame face encoder's steps (channels-last frames -> embeddings) as one module."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        for step in self.encoder.steps():
            frames = step.fn(frames)
        return frames


class _TensorSession:
    """A module exported and run by a session on CPU tensors (views made contiguous): its output as a tensor."""

    def __init__(self, module: nn.Module, examples: dict[str, torch.Tensor], free_time: bool, threads: int) -> None:
        self._names = list(examples)
        self._session = cpu_session(export_onnx(module.eval(), examples, free_time), threads)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: np.ascontiguousarray(x.numpy(), dtype=np.float32) for name, x in zip(self._names, inputs)}
        return torch.from_numpy(self._session.run(None, feed)[0])


class _SessionFaceEncoder:
    """A per-frame face encoder as `VisualStream` reads it: one per-frame step, run by a session."""

    receptive_frames = 0

    def __init__(self, session: _TensorSession) -> None:
        self._session = session

    def steps(self) -> list[Step]:
        return [Step(self._session)]


class OnnxStreamingNet:
    """An active-speaker network run by ONNX Runtime: the calls the streaming scorers make of the
    torch network (`visual_encoder`, `audio_frontend`, `speaking_logits`), CPU tensors in and out,
    with free batch and time axes. A face encoder that reads one frame at a time (`rtdiar-distilled`)
    runs in a session too; a temporal one (LR-ASD's, Light-ASD's) keeps its torch steps, which
    `VisualStream` streams a frame at a time."""

    def __init__(self, net: nn.Module, face_px: int, threads: int) -> None:
        self.visual_encoder = net.visual_encoder
        if not net.visual_encoder.receptive_frames:
            faces = {"frames": torch.zeros((2, face_px, face_px, 1))}
            self.visual_encoder = _SessionFaceEncoder(_TensorSession(_FaceChain(net.visual_encoder), faces, False, threads))
        embedded = torch.zeros((2, 16, EMBED_DIM))
        self.audio_frontend = _TensorSession(_Method(net, "audio_frontend"), {"mfcc": torch.zeros((1, 64, 13))},
                                             True, threads)
        self.speaking_logits = _TensorSession(_Method(net, "speaking_logits"), {"sound": embedded, "faces": embedded},
                                              True, threads)
