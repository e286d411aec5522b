"""From raw per-window sync scores to who speaks: causal smoothing, VAD gating, hysteresis.

Everything here is causal: a decision at time t uses only scores and speech evidence up to t.
"""

from __future__ import annotations

from collections import deque

from rtdiar.config import DecisionConfig


class CausalSmoother:
    """Per-track moving average of the last `n_windows` raw scores (no look-ahead)."""

    def __init__(self, n_windows: int) -> None:
        if n_windows < 1:
            raise ValueError("n_windows must be at least 1")
        self.n_windows = n_windows
        self._scores: dict[int, deque[float]] = {}

    def add(self, track_id: int, raw_score: float) -> float:
        """Record a newly scored window and return the track's smoothed score."""
        window = self._scores.setdefault(track_id, deque(maxlen=self.n_windows))
        window.append(float(raw_score))
        return sum(window) / len(window)

    def value(self, track_id: int) -> float | None:
        """The current smoothed score, None until the track has been scored once."""
        window = self._scores.get(track_id)
        return sum(window) / len(window) if window else None

    def forget(self, track_id: int) -> None:
        """Drop an ended track so memory does not grow with the number of faces ever seen."""
        self._scores.pop(track_id, None)


class SpeakerDecision:
    """Chooses the speaking face with hysteresis and a minimum hold, so the highlight does not flicker.

    A face takes the floor when speech is present and its smoothed score clears `threshold`
    (and beats the current speaker by `switch_margin`); the speaker keeps it while its score stays
    above `threshold - hysteresis` and speech was heard within `vad_hangover_s`. Any change of
    decision (to another face or to nobody) waits until the current one has held `min_hold_s`.
    """

    def __init__(self, cfg: DecisionConfig) -> None:
        self.cfg = cfg
        self.speaker: int | None = None
        self._since_t = float("-inf")
        self._last_speech_t = float("-inf")

    def update(self, t: float, scores: dict[int, float | None], speech: bool) -> int | None:
        """The speaker at time `t`, given each visible face's smoothed score and the VAD."""
        if speech:
            self._last_speech_t = t
        wanted = self._wanted(t, scores)
        if wanted != self.speaker and t - self._since_t >= self.cfg.min_hold_s:
            self.speaker, self._since_t = wanted, t
        if self.speaker is not None and self.speaker not in scores:
            self.speaker, self._since_t = None, t  # the face left the picture: never keep a ghost
        return self.speaker

    def _wanted(self, t: float, scores: dict[int, float | None]) -> int | None:
        """The decision the evidence asks for now, before the hold is applied."""
        voiced = t - self._last_speech_t <= self.cfg.vad_hangover_s
        scored = {tid: s for tid, s in scores.items() if s is not None}
        if not voiced or not scored:
            return None
        best = max(scored, key=scored.__getitem__)
        current = scored.get(self.speaker) if self.speaker is not None else None
        keeps = current is not None and current >= self.cfg.threshold - self.cfg.hysteresis
        if keeps:
            challenger_wins = best != self.speaker and scored[best] >= max(
                self.cfg.threshold, current + self.cfg.switch_margin)
            return best if challenger_wins else self.speaker
        return best if scored[best] >= self.cfg.threshold else None
