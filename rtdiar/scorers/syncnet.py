"""The SyncNet networks and their weights files; tensors in, tensors out, nothing about frames.

`SyncNetColor` mirrors Wav2Lip's `SyncNet_color` layer for layer (same attribute names and
order), so Wav2Lip's official `lipsync_expert.pth` loads into it unchanged.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from rtdiar.scorers.asd import LRASD, LightASD
from rtdiar.scorers.baseline import EnergyBaseline
from rtdiar.scorers.distilled import DistilledASD
from rtdiar.scorers.sync_head import JointFusion, SyncHead
from rtdiar.errors import RtdiarError

MODULE_PREFIX = "module."  # what nn.DataParallel puts in front of every key


class Conv2d(nn.Module):
    """Wav2Lip's block: conv + batch norm (+ input, when residual) + ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _residual_stage(cin: int, cout: int, stride: int | tuple[int, int], kernel_size: int, repeats: int) -> list[Conv2d]:
    """A strided block that changes the width, then `repeats` residual blocks at that width."""
    blocks = [Conv2d(cin, cout, kernel_size, stride, padding=1)]
    blocks += [Conv2d(cout, cout, 3, 1, 1, residual=True) for _ in range(repeats)]
    return blocks


class SyncNetColor(nn.Module):
    """Wav2Lip's SyncNet_color: 5 stacked BGR lower-face crops vs 0.2 s of mel, as two 512-d unit vectors."""

    def __init__(self) -> None:
        super().__init__()
        # (B, 15, 48, 96) -> (B, 512, 1, 1)
        self.face_encoder = nn.Sequential(
            Conv2d(15, 32, kernel_size=7, stride=1, padding=3),
            *_residual_stage(32, 64, stride=(1, 2), kernel_size=5, repeats=2),
            *_residual_stage(64, 128, stride=2, kernel_size=3, repeats=3),
            *_residual_stage(128, 256, stride=2, kernel_size=3, repeats=2),
            *_residual_stage(256, 512, stride=2, kernel_size=3, repeats=2),
            Conv2d(512, 512, kernel_size=3, stride=2, padding=1),
            Conv2d(512, 512, kernel_size=3, stride=1, padding=0),
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0),
        )
        # (B, 1, 80, 16) -> (B, 512, 1, 1)
        self.audio_encoder = nn.Sequential(
            *_residual_stage(1, 32, stride=1, kernel_size=3, repeats=2),
            *_residual_stage(32, 64, stride=(3, 1), kernel_size=3, repeats=2),
            *_residual_stage(64, 128, stride=3, kernel_size=3, repeats=2),
            *_residual_stage(128, 256, stride=(3, 2), kernel_size=3, repeats=2),
            Conv2d(256, 512, kernel_size=3, stride=1, padding=0),
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0),
        )

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) Wav2Lip-normalised mel -> (B, 512) unit vectors."""
        return F.normalize(self.audio_encoder(audio).flatten(1), p=2, dim=1)

    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 15, 48, 96) five BGR crops in [0, 1], stacked on channels -> (B, 512) unit vectors."""
        return F.normalize(self.face_encoder(faces).flatten(1), p=2, dim=1)

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(audio), self.embed_faces(faces)


def _conv_bn(cin: int, cout: int, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
             padding: int | tuple[int, int] = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# BGR -> luma weights (ITU-R BT.601), as OpenCV's COLOR_BGR2GRAY
_LUMA_BGR = (0.114, 0.587, 0.299)


def lip_motion(faces: torch.Tensor, frames: int = 5, eps: float = 0.02) -> torch.Tensor:
    """(B, 3*frames, H, W) stacked BGR crops -> (B, frames, H, W) grey frames minus their window mean,
    scaled to unit RMS.

    What stays is what *changes* within the 0.2 s: the lips (and any head motion), not the face's
    colour, skin, beard or lighting, which a model trained on ~100 people would otherwise learn as
    identity. `eps` keeps a still, noise-free window from being blown up to full scale.
    """
    b, _, h, w = faces.shape
    bgr = faces.reshape(b, frames, 3, h, w)
    weights = faces.new_tensor(_LUMA_BGR).reshape(1, 1, 3, 1, 1)
    grey = (bgr * weights).sum(dim=2)
    motion = grey - grey.mean(dim=1, keepdim=True)
    rms = motion.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    return motion / (rms + eps)


def compact_audio_encoder() -> nn.Sequential:
    """(B, 1, 80, 16) mel -> (B, 256, 1, 1): the audio tower of rtdiar's own experts."""
    return nn.Sequential(
        _conv_bn(1, 32, 3, stride=(2, 1)),  # 40 x 16
        _conv_bn(32, 64, 3, stride=(2, 1)),  # 20 x 16
        _conv_bn(64, 64, 3, stride=2),  # 10 x 8
        _conv_bn(64, 128, 3, stride=2),  # 5 x 4
        _conv_bn(128, 256, (5, 4), padding=0),  # 1 x 1
    )


class _OwnExpert(nn.Module):
    """What rtdiar's own experts share: the compact audio tower, unit embeddings, the forward pass.
    A subclass builds its face tower first, then `_add_audio_tower` (the order fixes the random
    initialisation, so a recipe replays the weights it shipped)."""

    def _add_audio_tower(self, embed_dim: int) -> None:
        self.audio_encoder = compact_audio_encoder()
        self.audio_head = nn.Linear(256, embed_dim)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) Wav2Lip-normalised mel -> (B, embed_dim) unit vectors."""
        return F.normalize(self.audio_head(self.audio_encoder(audio).flatten(1)), dim=1)

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(audio), self.embed_faces(faces)


class CompactSyncNet(_OwnExpert):
    """rtdiar's own lip-sync expert: the lip *motion* of 5 frames vs 0.2 s of mel, 1.6 M parameters.

    Same inputs as SyncNet_color (15 x 48 x 96 BGR in [0, 1], 80 x 16 mel) so the engine feeds
    either unchanged, but the face tower sees only `lip_motion` (identity removed) at about a
    twentieth of the compute. Embeddings are unit vectors; their cosine is the sync score.
    """

    def __init__(self, embed_dim: int = 128) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(  # (B, 5, 48, 96)
            _conv_bn(5, 32, 5, stride=2, padding=2),  # 24 x 48
            _conv_bn(32, 48, 3, stride=(1, 2)),  # 24 x 24
            _conv_bn(48, 64, 3, stride=2),  # 12 x 12
            _conv_bn(64, 64, 3),
            _conv_bn(64, 128, 3, stride=2),  # 6 x 6
            _conv_bn(128, 128, 3),
            _conv_bn(128, 256, 3, stride=2),  # 3 x 3
            _conv_bn(256, 256, 3, padding=0),  # 1 x 1
        )
        self.face_head = nn.Linear(256, embed_dim)
        self._add_audio_tower(embed_dim)

    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 15, 48, 96) five BGR crops in [0, 1], stacked on channels -> (B, embed_dim) unit vectors."""
        return F.normalize(self.face_head(self.face_encoder(lip_motion(faces)).flatten(1)), dim=1)


def _linear_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


LIP_MOTION_GAIN = 10.0  # lip points move by hundredths of the eye distance in 0.2 s: brought to the shape's scale


class LipSyncNet(_OwnExpert):
    """rtdiar's landmark expert: 5 frames of eye-aligned lip points (`rtdiar.lips`) vs 0.2 s of mel.

    The face tower sees each frame's lip shape and its motion within the window, never pixels, so it
    cannot learn who the training faces are. A small MLP over the whole window (a temporal
    convolution validated a little lower in a scratch run: 0.703 against 0.706 at step 3500); the
    audio tower is the compact model's.
    """

    face_inputs = ("lips",)

    def __init__(self, embed_dim: int = 128, points: int = 42, frames: int = 5) -> None:
        super().__init__()
        self.face_encoder = nn.Sequential(  # (B, 5 * P * 4): x, y and their motion in each frame
            *_linear_bn(frames * points * 4, 512), *_linear_bn(512, 512), *_linear_bn(512, 256))
        self.face_head = nn.Linear(256, embed_dim)
        self._add_audio_tower(embed_dim)

    def embed_faces(self, lips: torch.Tensor) -> torch.Tensor:
        """(B, 5, P, 2) eye-aligned lip points -> (B, embed_dim) unit vectors."""
        motion = lips - lips.mean(dim=1, keepdim=True)
        window = torch.cat([lips, LIP_MOTION_GAIN * motion], dim=3).flatten(1)
        return F.normalize(self.face_head(self.face_encoder(window)), dim=1)


def face_inputs(model: nn.Module) -> tuple[str, ...]:
    """What a model's face tower reads, in its argument order: `crops` (5 stacked BGR crops) and/or
    `lips` (5 frames of lip points)."""
    return getattr(model, "face_inputs", ("crops",))


class Ensemble(nn.Module):
    """Experts trained apart, run as one network whose cosine is the mean of theirs.

    Each member's unit embedding is scaled by 1/sqrt(n) and they are concatenated, so the result is
    again a unit vector and the engine, the offset tool and ONNX Runtime use it unchanged. With about
    a hundred training faces each run memorises some of them its own way; the average keeps what the
    members agree on, the lips. The face tower reads every input some member needs.
    """

    def __init__(self, archs: tuple[str, ...]) -> None:
        super().__init__()
        self.members = nn.ModuleList([build_model(arch) for arch in archs])
        self.face_inputs = tuple(dict.fromkeys(name for m in self.members for name in face_inputs(m)))

    def _joined(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(embeddings, dim=1) / len(embeddings) ** 0.5

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return self._joined([m.embed_audio(audio) for m in self.members])

    def embed_faces(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.face_inputs, inputs))
        return self._joined([m.embed_faces(*(named[name] for name in face_inputs(m))) for m in self.members])

    def forward(self, audio: torch.Tensor, *faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_audio(audio), self.embed_faces(*faces)


def pair_models(first: str | Path, second: str | Path, arch: str = "compact_pair") -> Ensemble:
    """An ensemble arch (the engine's default model is one) from its members' weights files, in order."""
    ensemble = build_model(arch)
    for member, path in zip(ensemble.members, (first, second)):
        load_weights(member, path)  # members are tagged with their arch, so another arch's file is refused
    return ensemble


# Every network rtdiar can run, by the name used in configs and in weights metadata.
ARCHS: dict[str, Callable[[], nn.Module]] = {
    "wav2lip": SyncNetColor,
    "compact": CompactSyncNet,
    "compact_pair": lambda: Ensemble(("compact", "compact")),
    "lips": LipSyncNet,
    "compact_lips": lambda: Ensemble(("compact", "lips")),
    "baseline": EnergyBaseline,  # training-free: lip opening vs loudness, the floor to beat
    "lrasd": LRASD,  # active-speaker models (their published .model files): a speaking logit, not a sync cosine
    "lightasd": LightASD,
    "sync_head": SyncHead,  # rtdiar's sync head on LR-ASD's front ends, fused with its logit (scorers/fused.py)
    "distilled": DistilledASD,  # rtdiar's compact judgement, taught by LR-ASD, with its own sync head (scorers/distilled.py)
    "joint": JointFusion,  # two of those weighed into one (scorers/joint.py): the file holds the weights, names the members
}


def build_model(arch: str) -> nn.Module:
    """A fresh network of the named architecture, tagged with that name for load_weights' check."""
    if arch not in ARCHS:
        raise RtdiarError(f"unknown model arch '{arch}' (known: {', '.join(sorted(ARCHS))})")
    model = ARCHS[arch]()
    model.arch = arch
    return model


def _model_name(model: nn.Module) -> str:
    return getattr(model, "arch", type(model).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise RtdiarError(f"cannot read weights {path}: {_first_line(exc)}") from None
    return state, metadata


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Wav2Lip's checkpoint dict or a plain state_dict, unpickled with weights_only (no code runs)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message advises weights_only=False: never here
        raise RtdiarError(
            f"cannot read weights {path}: not a file of plain tensors (corrupt, or it holds pickled code, never run)"
        ) from None
    except EOFError:
        raise RtdiarError(f"cannot read weights {path}: the file is empty or cut short") from None
    except Exception as exc:  # torch.load raises many unrelated types for a bad file
        raise RtdiarError(f"cannot read weights {path}: {_first_line(exc)}") from None
    metadata: dict[str, str] = {}
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        metadata = {key: str(loaded[key]) for key in ("global_step", "global_epoch") if key in loaded}
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise RtdiarError(f"weights {path} hold no state_dict of tensors")
    return dict(loaded), metadata


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if all(key.startswith(MODULE_PREFIX) for key in state):
        return {key[len(MODULE_PREFIX) :]: value for key, value in state.items()}
    return state


def _check_fits(state: Mapping[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Name the first missing, mis-shaped or unexpected key, the way a user can act on it."""
    expected = model.state_dict()
    prefix = f"weights {path} do not fit model '{_model_name(model)}'"
    missing = [key for key in expected if key not in state]
    if missing:
        raise RtdiarError(f"{prefix}: missing key {missing[0]} ({len(missing)} missing in all)")
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            raise RtdiarError(f"{prefix}: {key} is {list(got.shape)} in the file, {list(want.shape)} in the model")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise RtdiarError(f"{prefix}: unexpected key {unexpected[0]} ({len(unexpected)} unexpected in all)")


# A key only that family's files hold: how a torch file, which has no metadata, names its architecture.
_SIGNATURE_KEYS = {
    "model.detector.gru_forward.weight_ih_l0": "lrasd",
    "model.GRU.gru_forward.weight_ih_l0": "lightasd",
    "face_encoder.0.conv_block.0.weight": "wav2lip",
}


def weights_arch(path: str | Path) -> str | None:
    """The architecture a weights file is for: what an rtdiar .safetensors file was saved for, else
    the family a torch file's keys belong to (LR-ASD, Light-ASD, Wav2Lip); None when neither says."""
    path = Path(path)
    if path.suffix != ".safetensors":
        state = _strip_module_prefix(_read_torch(path)[0])
        return next((arch for key, arch in _SIGNATURE_KEYS.items() if key in state), None)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("arch")
    except (SafetensorError, OSError, ValueError) as exc:
        raise RtdiarError(f"cannot read weights {path}: {_first_line(exc)}") from None


def load_weights(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load Wav2Lip's checkpoint, a plain state_dict or rtdiar's safetensors into `model`; return the metadata."""
    path = Path(path)
    if not path.is_file():
        raise RtdiarError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
        file_arch = metadata.get("arch")
        model_arch = getattr(model, "arch", None)
        if file_arch is not None and model_arch is not None and file_arch != model_arch:
            raise RtdiarError(f"weights {path} are for model '{file_arch}', not '{model_arch}' (set model.arch: {file_arch})")
    else:
        state, metadata = _read_torch(path)
    state = _strip_module_prefix(state)
    _check_fits(state, model, path)
    model.load_state_dict(state)
    return metadata


def save_weights(model: nn.Module, path: str | Path, arch: str, metadata: dict[str, str]) -> None:
    """Write the weights as safetensors with `arch` in the metadata; atomic, so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata={**metadata, "arch": arch})
    os.replace(partial, path)
