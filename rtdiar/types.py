"""The per-frame value that flows through every stage, supervision-style.

The tracker fills `faces`, the scorer sets `raw_score`, the decision sets `score`, `speaking`
and `speaker`; every sink (JSON lines, RTTM, video, window, plot) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FaceResult:
    """One tracked face in one frame."""

    id: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source pixels
    score: float | None = None  # smoothed score (sync or speaking, as the scorer gives), None until it is scored
    speaking: bool = False
    raw_score: float | None = None  # this frame's unsmoothed score, None when not scored

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "box": [round(float(v), 1) for v in self.box],
            "score": None if self.score is None else round(float(self.score), 4),
            "speaking": self.speaking,
        }


@dataclass
class FrameResult:
    """Everything rtdiar decided about one source video frame."""

    frame: int  # 0-based index of the frame in the source
    t: float  # presentation time in seconds
    faces: list[FaceResult] = field(default_factory=list)
    speaker: int | None = None
    latency_ms: float | None = None
    speech: bool = False  # the VAD heard speech in this frame's audio window
    image: np.ndarray | None = field(default=None, repr=False)  # BGR source frame, for drawing sinks
    capture_time: float = 0.0  # time.monotonic() when the frame was captured or replayed

    def to_json(self) -> dict:
        """The JSON lines contract: exactly these keys, in this order."""
        return {
            "frame": self.frame,
            "t": round(self.t, 4),
            "faces": [f.to_json() for f in self.faces],
            "speaker": self.speaker,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
        }
