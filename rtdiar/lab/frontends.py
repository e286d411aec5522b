"""The frozen front ends of an active-speaker model over prepared clips: what the sync head learns on.

LR-ASD's (or Light-ASD's) face front end gives a 128-d vector per 25 fps frame of a track, its
sound front end one per frame of the clip's MFCCs; both were shaped by thousands of AVA faces. Run
over a whole clip they equal what the live stream gives at its exact delay (`asd_stream`), so a
head trained on these cached arrays sees at run time what it learnt on. Each clip is cached as one
`.npz` under the prepared clips' settings hash and the weights file's name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from rtdiar.audio import VoiceActivity
from rtdiar.config import Config
from rtdiar.lab.dataset import PreparedClip, cache_path, prepare_clips
from rtdiar.scorers.fused import clip_mfcc, face_embeddings, sound_embeddings
from rtdiar.sources import FileSource

FEATURES_VERSION = 2  # bump when what is cached changes (2: the sound's MFCCs int16-scaled, as live)
MAX_CLIP_S = 600.0  # the speech probabilities of a longer clip start late (the VAD's history)


@dataclass
class FrontendClip:
    """One clip's main face track and sound as frozen front-end embeddings on the 25 fps grid.

    Face row k is grid frame `first_frame + k`; sound row j is frame j of the clip (time j / 25 s),
    so face row k pairs in sync with sound row `first_frame + k`.
    """

    name: str
    faces: np.ndarray  # (T, 128) float32
    valid: np.ndarray  # (T,) bool: a real crop lies at the grid frame
    first_frame: int
    sound: np.ndarray  # (N, 128) float32
    speech: np.ndarray  # (N,) float32 Silero speech probability of each frame

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, name=self.name, faces=self.faces.astype(np.float16), valid=self.valid,
                 first_frame=self.first_frame, sound=self.sound.astype(np.float16), speech=self.speech)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> FrontendClip:
        with np.load(path) as data:
            return cls(str(data["name"]), data["faces"].astype(np.float32), data["valid"], int(data["first_frame"]),
                       data["sound"].astype(np.float32), data["speech"])


def frame_speech(vad: VoiceActivity, wave: np.ndarray, frames: int) -> np.ndarray:
    """(frames,) Silero's speech probability over each 25 fps frame (`vad` is reset first)."""
    vad.reset()
    vad.push(wave)
    return np.array([vad.speech_prob(j / 25, (j + 1) / 25) or 0.0 for j in range(frames)], np.float32)


def embed_prepared(clip: PreparedClip, wave: np.ndarray, net: nn.Module, vad: VoiceActivity) -> FrontendClip:
    """A prepared clip (with `asd` crops) and its aligned sound -> its front-end embeddings."""
    sound = sound_embeddings(net, clip_mfcc(wave, vad.sample_rate))
    return FrontendClip(clip.name, face_embeddings(net, clip.crops), clip.valid, clip.first_frame, sound,
                        frame_speech(vad, wave, len(sound)))


def features_path(clip: Path, cache_dir: Path, config: Config, weights_name: str, kind: str = "frontends") -> Path:
    """Where a clip's `kind` of cached arrays for the named model lives, beside its prepared clip."""
    prepared = cache_path(clip, cache_dir, config, asd=True)
    return prepared.parent.parent / f"{kind}-v{FEATURES_VERSION}-{weights_name}" / clip.parent.name / f"{clip.stem}.npz"


def prepare_features(clips: Sequence[Path], cache_dir: Path, config: Config, net: nn.Module, weights_name: str,
                     workers: int = 2) -> list[Path]:
    """Every clip's front-end embeddings (prepared and embedded where not cached yet); the cached
    paths of those with a face."""
    prepare_clips(clips, cache_dir, config, workers, asd=True)
    vad = VoiceActivity(config.audio.sample_rate, history_s=MAX_CLIP_S)
    done = []
    for clip in tqdm(clips, desc="front ends", unit="clip"):
        out = features_path(clip, cache_dir, config, weights_name)
        if not out.exists() and (embedded := embed_clip(clip, cache_dir, config, net, vad)) is not None:
            embedded.save(out)
        if out.exists():
            done.append(out)
    return done


def embed_clip(clip: Path, cache_dir: Path, config: Config, net: nn.Module, vad: VoiceActivity) -> FrontendClip | None:
    """A prepared clip's front-end embeddings, not cached (None when it has no face track)."""
    prepared = cache_path(clip, cache_dir, config, asd=True)
    if not prepared.exists():
        return None
    return embed_prepared(PreparedClip.load(prepared), clip_wave(clip, config), net, vad)


def clip_wave(clip: Path, config: Config) -> np.ndarray:
    """The clip's sound, sample 0 at its first video frame, as the engine reads it."""
    return FileSource(clip, None, "fast", config.video, config.audio).aligned_audio()
