"""The face front end of LR-ASD / Light-ASD one frame at a time, at a fixed delay, for live use.

Offline, a track's face embeddings come from the whole track: each temporal convolution reads
frames on both sides, zero-padded past the ends. Live, the embedding of frame n-1-delay is wanted
when frame n-1 arrives, as the offline encoder would give it on the frames so far (the future
zero-padded at every temporal convolution, exactly as at a track's end).

So each track keeps, per temporal step of the encoder's `Step` chain, the last 2p of that step's
*final* inputs (those no future frame can change). A new frame goes through every step once;
with `delay_frames` = `receptive_frames` that is all (exact streaming of the offline model). With
a smaller delay the embedding still depends on the future, so the few provisional frames it needs
(a tail of at most `receptive_frames` per step, fewer the larger the delay) are recomputed from
the kept inputs with zeros for the future, and thrown away. Per-frame steps run every track's
frames in one batch; a temporal step's new final output is one matrix product per tap on a view
of the track's kept inputs, so nothing is copied to make its window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rtdiar.errors import RtdiarError
from rtdiar.scorers.asd import Step, run_steps, scale_pixels
from rtdiar.tracking import ASD_FACE_PX  # the networks' input: the centre of a 224 x 224 grey face crop

SLACK_FRAMES = 16  # room to append before a `_FinalInputs` buffer shifts back; >= 2p, so the shift never overlaps

Range = tuple[int, int] | None  # frame indices first..last inclusive, or nothing


class _FinalInputs:
    """One track's final inputs to one temporal step: the last 2p (zeros before the track's start),
    in a buffer with slack so the newest window is a view, not a copy."""

    def __init__(self, reach: int, shape: torch.Size, device: torch.device) -> None:
        self._span = 2 * reach
        self._buffer = torch.zeros((self._span + SLACK_FRAMES, *shape), device=device)
        self._end = self._span

    def append(self, frame: torch.Tensor) -> torch.Tensor:
        """Keep `frame` (1, H, W, C); return the window of the last 2p + 1 inputs (2p + 1, H, W, C)."""
        if self._end == len(self._buffer):
            self._buffer[:self._span] = self._buffer[self._end - self._span:self._end]
            self._end = self._span
        self._buffer[self._end] = frame[0]
        self._end += 1
        return self._buffer[self._end - self._span - 1:self._end]

    @property
    def last(self) -> torch.Tensor:
        """The last 2p inputs (2p, H, W, C), oldest first."""
        return self._buffer[self._end - self._span:self._end]


@dataclass
class _TrackState:
    pushed: int  # frames pushed so far
    kept: dict[int, _FinalInputs]  # by temporal step


class VisualStream:
    """Per-track face embeddings, each `delay_frames` after its frame, all tracks in one batch.

    `net` (an active-speaker network already on `device`, or its `OnnxStreamingNet`) is read once:
    its face encoder's weights as they are now, batch norms folded in."""

    def __init__(self, net: nn.Module, delay_frames: int, device: torch.device, face_px: int = ASD_FACE_PX) -> None:
        self.steps: list[Step] = net.visual_encoder.steps()
        self.receptive_frames: int = sum(step.reach for step in self.steps)
        if not 0 <= delay_frames <= self.receptive_frames:
            raise RtdiarError(f"the face stream's delay is {delay_frames} frames: it must be 0 .. "
                              f"{self.receptive_frames} (the frames each side the face encoder sees)")
        self.delay = delay_frames
        self.device = device
        self.face_px = face_px
        # at each step's input (and the chain's output): how many of the newest frames are provisional
        self._lags = np.cumsum([0] + [step.reach for step in self.steps]).tolist()
        self._kept_shapes = self._temporal_input_shapes()
        self._tracks: dict[int, _TrackState] = {}

    def _temporal_input_shapes(self) -> dict[int, torch.Size]:
        """Each temporal step's input frame shape (H, W, C), from one zero frame run offline."""
        face = torch.zeros((1, 1, self.face_px, self.face_px, 1), device=self.device)
        with torch.inference_mode():
            return {i: run_steps(self.steps[:i], face).shape[2:] for i, step in enumerate(self.steps) if step.reach}

    def _new_track(self) -> _TrackState:
        kept = {i: _FinalInputs(self.steps[i].reach, shape, self.device) for i, shape in self._kept_shapes.items()}
        return _TrackState(0, kept)

    def forget(self, track_id: int) -> None:
        self._tracks.pop(track_id, None)

    def push(self, faces: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """One new 25 fps frame per listed track ((112, 112) uint8 grey); every listed track in one batch.
        Returns, for each listed track that has had more than `delay_frames` frames, the (128,) float32
        embedding of its frame n-1-delay (n = frames pushed for it so far)."""
        if not faces:
            return {}
        ids = list(faces)
        pixels = np.stack([faces[tid] for tid in ids])
        if pixels.shape[1:] != (self.face_px, self.face_px):
            raise ValueError(f"faces must be ({self.face_px}, {self.face_px}) grey, got {pixels.shape[1:]}")
        for tid in ids:
            if tid not in self._tracks:
                self._tracks[tid] = self._new_track()
        tracks = [self._tracks[tid] for tid in ids]
        for track in tracks:
            track.pushed += 1
        with torch.inference_mode():
            frames = scale_pixels(torch.from_numpy(pixels).to(self.device))[..., None]  # (N, H, W, 1)
            final = {k: frames[k:k + 1] for k in range(len(ids))}  # by position in `ids`: the new final frame here
            provisional: dict[int, tuple[int, torch.Tensor]] = {}  # by position: (first index, frames) here
            needs = [self._provisional_ranges(track.pushed) for track in tracks]
            for i, step in enumerate(self.steps):
                if step.reach:
                    final = self._advance_final(i, step, tracks, final)
                    provisional = self._recompute_tail(i, step, tracks, provisional, needs)
                else:
                    final, provisional = self._per_frame(step, final, provisional)
            out = {}
            for k, (tid, track) in enumerate(zip(ids, tracks)):
                if track.pushed > self.delay:
                    out[tid] = (final[k] if self.delay == self.receptive_frames else provisional[k][1])[0]
            return {tid: emb.float().cpu().numpy() for tid, emb in out.items()}

    def _provisional_ranges(self, pushed: int) -> list[Range]:
        """The frames to recompute at each step's input (and the chain's output, last) for the
        embedding of frame pushed-1-delay: what reaches it, less what is final there."""
        if pushed <= self.delay:
            return [None] * (len(self.steps) + 1)
        first = last = pushed - 1 - self.delay
        ranges: list[Range] = []
        for position in range(len(self.steps), -1, -1):
            start = max(first, pushed - self._lags[position])
            ranges.append((start, last) if start <= last else None)
            if position:
                reach = self.steps[position - 1].reach
                first, last = max(0, first - reach), min(pushed - 1, last + reach)
        return ranges[::-1]

    @staticmethod
    def _per_frame(step: Step, final: dict[int, torch.Tensor],
                   provisional: dict[int, tuple[int, torch.Tensor]]) -> tuple[dict, dict]:
        """A per-frame step on every track's final and provisional frames, in one call."""
        parts = list(final.values()) + [frames for _, frames in provisional.values()]
        if not parts:
            return final, provisional
        outputs = step.fn(torch.cat(parts)).split([len(part) for part in parts])
        new_final = dict(zip(final, outputs))
        new_provisional = {k: (start, out) for (k, (start, _)), out in zip(provisional.items(), outputs[len(final):])}
        return new_final, new_provisional

    def _advance_final(self, i: int, step: Step, tracks: list[_TrackState],
                       final: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Keep each new final input; where it completes a window (p inputs ahead of the output), the
        output is final too. Track by track: the window is a view of the kept inputs, never copied."""
        outputs = {}
        for k, frame in final.items():
            window = tracks[k].kept[i].append(frame)
            if tracks[k].pushed > self._lags[i + 1]:  # the window holds a real output frame, not only the start's zeros
                outputs[k] = step.fn(window[:, None])[0]
        return outputs

    def _recompute_tail(self, i: int, step: Step, tracks: list[_TrackState],
                        provisional: dict[int, tuple[int, torch.Tensor]],
                        needs: list[list[Range]]) -> dict[int, tuple[int, torch.Tensor]]:
        """Each track's provisional outputs of temporal step i from its kept final inputs, the
        provisional inputs and zeros for frames not yet pushed; equal windows run as one batch."""
        groups: dict[int, dict[int, torch.Tensor]] = {}
        for k, track in enumerate(tracks):
            wanted = needs[k][i + 1]
            if wanted is not None:
                window = self._window(i, step.reach, track, provisional.get(k), wanted)
                groups.setdefault(len(window), {})[k] = window
        result = {}
        for windows in groups.values():
            outputs = step.fn(torch.stack(list(windows.values()), dim=1))
            result.update({k: (needs[k][i + 1][0], outputs[:, j]) for j, k in enumerate(windows)})
        return result

    def _window(self, i: int, reach: int, track: _TrackState, inputs: tuple[int, torch.Tensor] | None,
                wanted: tuple[int, int]) -> torch.Tensor:
        """Input frames first-reach .. last+reach of temporal step i: kept, provisional, zeros."""
        kept = track.kept[i].last
        first, last = wanted[0] - reach, wanted[1] + reach
        finals = max(0, track.pushed - self._lags[i])  # inputs 0 .. finals-1 are final; kept holds the last 2p
        parts = [kept[min(len(kept), max(0, first - (finals - len(kept)))):]]
        if inputs is not None:
            start, frames = inputs
            parts.append(frames[max(first, finals) - start:min(last, track.pushed - 1) + 1 - start])
        future = last - max(track.pushed - 1, first - 1)
        if future > 0:
            parts.append(kept.new_zeros((future, *kept.shape[1:])))
        return torch.cat(parts)
