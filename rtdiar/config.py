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
    every_frames: int

    def __post_init__(self) -> None:
        if type(self.every_frames) is not int or self.every_frames < 1:
            raise RtdiarError(f"config key 'detector.every_frames' must be a whole number of at least 1, "
                              f"got {self.every_frames!r}")


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
        """A known model's name (`rtdiar weights`) is its file on this machine; relative paths are
        taken from the project root, so they work from any cwd."""
        from rtdiar.scorers.registry import resolve  # it imports this module

        path = resolve(self.weights).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    def named_arch(self) -> str | None:
        """`arch`, or for `auto` the architecture the weights file names (rtdiar's metadata, or the keys
        of an LR-ASD, Light-ASD or Wav2Lip file); None where there is no file or it names none."""
        if self.arch != "auto":
            return self.arch
        from rtdiar.scorers.syncnet import weights_arch  # the model side, loaded only when asked

        path = self.weights_path()
        return weights_arch(path) if path.is_file() else None


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
class AsdConfig:
    """The active-speaker scorers' input and streaming (LR-ASD, Light-ASD); their decision defaults
    are `asd.decision`, laid over `decision` when such a model runs."""

    box_scale: float
    window_frames: int
    delay_frames: int | None
    lookahead_frames: int
    threads: int
    decision: dict

    def __post_init__(self) -> None:
        unknown = set(self.decision) - {f.name for f in dataclasses.fields(DecisionConfig)}
        if unknown:
            raise RtdiarError(f"unknown config key 'asd.decision.{sorted(unknown)[0]}'")
        for name, least in (("window_frames", 1), ("delay_frames", 0), ("lookahead_frames", 0), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < least):
                raise RtdiarError(f"config key 'asd.{name}' must be a whole number of at least {least}, got {value!r}")
        if self.lookahead_frames >= self.window_frames:
            raise RtdiarError("config key 'asd.lookahead_frames' must be smaller than 'asd.window_frames'")


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
    asd: AsdConfig
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
    "asd": AsdConfig,
    "offset": OffsetConfig,
    "ui": UIConfig,
}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, the scorer family's own decision defaults (`asd.decision` for an active-speaker
    model), then the user's YAML file, then dotted overrides such as {"model.device": "cpu"}."""
    defaults = read_yaml(DEFAULT_CONFIG)
    user = read_yaml(Path(path)) if path is not None else {}
    nested: dict = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        nested.setdefault(section, {})[key] = value
    data = merge_settings(merge_settings(defaults, user, ""), nested, "")
    if scorer_family(build_section(ModelConfig, data["model"], "model.")) == "asd":
        family = merge_settings(defaults, {"decision": data["asd"]["decision"]}, "")
        data = merge_settings(merge_settings(family, user, ""), nested, "")
    return Config(**{name: build_section(cls, data[name], f"{name}.") for name, cls in _SECTIONS.items()})


ASD_ARCHS = ("lrasd", "lightasd", "sync_head", "distilled", "joint")  # a speaking logit per face (> 0: talking), not a sync cosine


def scorer_family(model: ModelConfig) -> str:
    """`asd` for an active-speaker model (LR-ASD, Light-ASD: a logit scale), else `sync` (a lip-sync
    expert's cosine); `auto` asks the weights file."""
    return "asd" if model.named_arch() in ASD_ARCHS else "sync"
