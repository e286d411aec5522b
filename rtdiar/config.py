"""One typed config object, built from configs/default.yaml, an optional user file and overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rtdiar.errors import RtdiarError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


@dataclass
class VideoConfig:
    fallback_fps: float
    camera_width: int
    camera_height: int
    queue_frames: int


@dataclass
class AudioConfig:
    sample_rate: int
    ring_s: float
    block_s: float
    mic_silence_timeout_s: float
    wait_timeout_s: float


@dataclass
class DetectorConfig:
    model_selection: int
    min_confidence: float
    max_side_px: int


@dataclass
class TrackerConfig:
    iou_threshold: float
    min_hits: int
    max_misses: int
    box_smoothing: float
    cut_threshold: float
    pad_top: float
    pad_bottom: float
    pad_left: float
    pad_right: float


@dataclass
class WindowConfig:
    frames: int
    fps: float
    mel_frames: int
    crop_px: int


@dataclass
class ModelConfig:
    arch: str
    weights: str
    device: str
    runtime: str
    stride_frames: int

    def weights_path(self) -> Path:
        """Relative weights paths are taken from the project root, so they work from any cwd."""
        path = Path(self.weights).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path


@dataclass
class DecisionConfig:
    smooth_windows: int
    threshold: float
    hysteresis: float
    switch_margin: float
    min_hold_s: float
    vad_threshold: float
    vad_hangover_s: float
    cohort_shifts: list[int] | None

    def __post_init__(self) -> None:
        bounds = self.cohort_shifts
        if bounds is not None and not (isinstance(bounds, list) and len(bounds) == 2
                                       and all(type(b) is int for b in bounds) and 1 <= bounds[0] <= bounds[1]):
            raise RtdiarError("config key 'decision.cohort_shifts' must be [first, last] whole frames with "
                              f"1 <= first <= last, or null, got {bounds!r}")

    def cohort(self) -> range | None:
        """The shifts (frames) of the off-sync pairings each score is measured against (`rtdiar.cohort`)."""
        return range(self.cohort_shifts[0], self.cohort_shifts[1] + 1) if self.cohort_shifts else None


@dataclass
class OffsetConfig:
    max_shift: int
    min_confidence: float


@dataclass
class UIConfig:
    plot_history_s: float
    refresh_ms: int


@dataclass
class Config:
    video: VideoConfig
    audio: AudioConfig
    detector: DetectorConfig
    tracker: TrackerConfig
    window: WindowConfig
    model: ModelConfig
    decision: DecisionConfig
    offset: OffsetConfig
    ui: UIConfig


def merge_settings(base: dict, overlay: dict, where: str, free: frozenset[str] = frozenset()) -> dict:
    """Deep-merge `overlay` into `base`, refusing keys the defaults do not know (typos).

    A mapping named in `free` (dotted, e.g. "data.folder_weights") is keyed by the user's own
    names: the overlay's replaces it whole instead of being checked against its keys.
    """
    out = dict(base)
    for key, value in overlay.items():
        if key not in base:
            raise RtdiarError(f"unknown config key '{where}{key}'")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise RtdiarError(f"config key '{where}{key}' must be a mapping")
            nested = f"{where}{key}"
            out[key] = dict(value) if nested in free else merge_settings(base[key], value, f"{nested}.", free)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RtdiarError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise RtdiarError(f"cannot read config file {path}: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RtdiarError(f"config file {path} must hold a mapping")
    return data


def build_section(cls: type, data: dict, where: str) -> Any:
    """One config section as its dataclass, with YAML ints widened to floats where floats are due."""
    obj = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        want = {"float": float, "int": int, "str": str}.get(str(f.type))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))
        elif want is not None and not isinstance(getattr(obj, f.name), want):
            raise RtdiarError(f"config key '{where}{f.name}' must be a {want.__name__}, got {value!r}")
    return obj


_SECTIONS = {
    "video": VideoConfig,
    "audio": AudioConfig,
    "detector": DetectorConfig,
    "tracker": TrackerConfig,
    "window": WindowConfig,
    "model": ModelConfig,
    "decision": DecisionConfig,
    "offset": OffsetConfig,
    "ui": UIConfig,
}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the user's YAML file, then dotted overrides such as {"model.device": "cpu"}."""
    data = read_yaml(DEFAULT_CONFIG)
    if path is not None:
        data = merge_settings(data, read_yaml(Path(path)), "")
    nested: dict = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        nested.setdefault(section, {})[key] = value
    data = merge_settings(data, nested, "")
    return Config(**{name: build_section(cls, data[name], f"{name}.") for name, cls in _SECTIONS.items()})
