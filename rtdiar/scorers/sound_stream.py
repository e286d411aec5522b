"""The sound front end of the active-speaker models on the live MFCC window, each frame computed once.

At every scored frame the engine hands the scorer the MFCCs of the last `audio_frames` frames, and
the scorer wants their embeddings up to its newest embedded face frame. A front end's embedding of
a frame reads at most `reach` frames on each side (LR-ASD's 6, Light-ASD's 5, rtdiar-distilled's 6
back and none ahead), so once `reach` real frames lie on both sides of it inside the window it no
longer changes: it is kept. A new window then computes only what it adds, from a short chunk of
rows around it (with the newest frames, which still wait for theirs, again). The result equals the
front end run over the whole window (what the scorer did before: 42 frames a call for LR-ASD,
17 now). A window that does not continue the last one, checked on the rows they share, starts
afresh, so the equality never rests on the steps alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from rtdiar.scorers.asd import EMBED_DIM
from rtdiar.windows import MFCC_PER_FRAME


class SoundStream:
    """Embeddings of the frames of successive MFCC windows, the final ones kept by frame index."""

    def __init__(self, frontend: Callable[[torch.Tensor], torch.Tensor], reach: int, device: torch.device) -> None:
        self.frontend, self.reach, self.device = frontend, reach, device
        self._rows: np.ndarray | None = None  # the last window's MFCC rows, and the step it ends at
        self._step = 0
        self._final: dict[int, torch.Tensor] = {}  # by frame index on the step grid

    def embed(self, step: int, mfcc: np.ndarray, stop: int, count: int) -> torch.Tensor:
        """(n, 128) embeddings of the window's frames stop - count .. stop - 1 (from its first frame
        at most), as the front end gives them on the whole window `mfcc` (whole frames, 4 rows each),
        whose last frame is frame `step`."""
        frames = len(mfcc) // MFCC_PER_FRAME
        base = step - frames + 1  # the window's first frame on the step grid
        if not self._continues(step, mfcc):
            self._final.clear()
        self._rows, self._step = np.array(mfcc, np.float32), step
        wanted = range(max(0, stop - count), stop)
        self._final = {frame: emb for frame, emb in self._final.items() if frame >= base + self.reach}
        missing = [p for p in wanted if p < self.reach or base + p not in self._final]
        fresh = self._compute(self._rows, missing[0], missing[-1]) if missing else {}
        for p, emb in fresh.items():
            if self.reach <= p < frames - self.reach:  # real frames each side: no later window changes it
                self._final[base + p] = emb
        if not wanted:
            return torch.zeros((0, EMBED_DIM), device=self.device)
        return torch.stack([fresh[p] if p in fresh else self._final[base + p] for p in wanted])

    def _continues(self, step: int, mfcc: np.ndarray) -> bool:
        """Whether `mfcc` (ending at `step`) holds the last window's rows on the frames they share."""
        if self._rows is None or step < self._step:
            return False
        last_base = self._step - len(self._rows) // MFCC_PER_FRAME + 1
        base = step - len(mfcc) // MFCC_PER_FRAME + 1
        shared = max(last_base, base)  # the frames shared are shared .. self._step
        if shared > self._step:
            return False
        kept = self._rows[(shared - last_base) * MFCC_PER_FRAME:]
        return np.array_equal(kept, mfcc[(shared - base) * MFCC_PER_FRAME:(self._step - base + 1) * MFCC_PER_FRAME])

    def _compute(self, rows: np.ndarray, first: int, last: int) -> dict[int, torch.Tensor]:
        """Frames first..last of the window through the front end, on them and `reach` frames each side."""
        frames = len(rows) // MFCC_PER_FRAME
        lo, hi = max(0, first - self.reach), min(frames, last + self.reach + 1)
        chunk = torch.from_numpy(rows[lo * MFCC_PER_FRAME:hi * MFCC_PER_FRAME])[None].to(self.device)
        with torch.inference_mode():
            out = self.frontend(chunk)[0]
        return {p: out[p - lo] for p in range(first, last + 1)}
