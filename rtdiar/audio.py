"""Audio on the stream: a sample-clocked ring, Wav2Lip's mel spectrogram (whole clip and live), the
MFCCs of the LR-ASD / Light-ASD active-speaker models (live), Silero VAD.

Wav2Lip's SyncNet was trained on one exact mel recipe (its `audio.py` + `hparams.py`); the constants
below are that recipe and are not tunable: change one and the lip-sync expert sees foreign features.

One deliberate difference from Wav2Lip's own code: it ran on librosa 0.7, whose `stft` padded the
clip's edges by *reflection*; librosa >= 0.10 pads with *zeros* (`pad_mode="constant"`). A live stream
has no future samples to reflect, so rtdiar uses zero padding everywhere. It only changes the first
two and the last two or three mel frames of a clip (those whose 800-sample window overlaps an edge).
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from functools import lru_cache

import librosa
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from python_speech_features.base import get_filterbanks, lifter
from python_speech_features.sigproc import powspec
from scipy.fftpack import dct
from scipy.signal import lfilter

from rtdiar.errors import RtdiarError

# Wav2Lip's hparams (hparams.py), fixed by the pretrained SyncNet.
MEL_SAMPLE_RATE = 16000
PREEMPHASIS = 0.97
N_FFT = 800
HOP_SAMPLES = 200
WIN_SAMPLES = 800
N_MELS = 80
FMIN_HZ = 55.0
FMAX_HZ = 7600.0
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_SILENCE = -MAX_ABS_VALUE  # the normalised mel of digital silence: what pads audio beyond a clip
HALF_WIN_SAMPLES = WIN_SAMPLES // 2  # frame m is centred on sample m * HOP_SAMPLES

# python_speech_features.mfcc(audio, 16000, numcep=13, winlen=0.025, winstep=0.010) with its defaults,
# the features LR-ASD and Light-ASD were trained on; fixed by their weights like Wav2Lip's constants above.
MFCC_WIN_SAMPLES = 400  # 25 ms, rectangular window
MFCC_HOP_SAMPLES = 160  # 10 ms: 100 rows a second, rows 4i .. 4i+3 go with video frame i at 25 fps
MFCC_N_FFT = 512
MFCC_N_FILTERS = 26
MFCC_N_CEPSTRA = 13
MFCC_CEP_LIFTER = 22
MFCC_PREEMPHASIS = 0.97
# Their demo reads int16 wav files (scipy's wavfile) and feeds the raw integers. Scale only shifts
# the energy coefficient (column 0: log of the frame power) by log(32768^2); the other cepstra are
# scale-free, but the weights learnt that offset, so rtdiar's [-1, 1] floats are scaled back up.
INT16_FULL_SCALE = 32768.0

VAD_CHUNK_SAMPLES = 512  # the only chunk size Silero VAD accepts at 16 kHz


def _require_16k(sample_rate: int, what: str) -> None:
    if sample_rate != MEL_SAMPLE_RATE:
        raise RtdiarError(f"{what} needs {MEL_SAMPLE_RATE} Hz mono audio, got {sample_rate} Hz")


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    """Wav2Lip's `_build_mel_basis` (Slaney mel filters, librosa's float32 default), computed once."""
    basis = librosa.filters.mel(sr=MEL_SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN_HZ, fmax=FMAX_HZ)
    basis.setflags(write=False)
    return basis


def _preemphasis(wav: np.ndarray, state: np.ndarray | None = None,
                 coefficient: float = PREEMPHASIS) -> tuple[np.ndarray, np.ndarray]:
    """Pre-emphasis y[n] = x[n] - c x[n-1] (Wav2Lip's c by default), in float64; `state` carries x[-1]
    across calls. A zero start state gives y[0] = x[0], as python_speech_features' `preemphasis` does."""
    if state is None:
        state = np.zeros(1)
    return lfilter([1.0, -coefficient], [1.0], np.asarray(wav, dtype=np.float64), zi=state)


def _normalised_mel(magnitude: np.ndarray) -> np.ndarray:
    """|STFT| (n_fft//2+1, T) -> Wav2Lip's normalised log-mel (80, T) float32 in [-4, 4].

    `_linear_to_mel`, `_amp_to_db` (20 log10, floor 1e-5) minus `ref_level_db`, then `_normalize`
    (symmetric, clipped) exactly as Wav2Lip's audio.py.
    """
    mel = _mel_basis() @ magnitude
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def wav2lip_melspectrogram(wav: np.ndarray, sr: int = MEL_SAMPLE_RATE) -> np.ndarray:
    """Wav2Lip's `audio.melspectrogram` of a whole clip: (80, 1 + len(wav) // 200) float32.

    Frame m is centred on sample m * 200 (librosa `center=True`, zero padding: see the module
    docstring), so the mel index of time t seconds is `round(t * 80)`.
    """
    _require_16k(sr, "the Wav2Lip mel spectrogram")
    emphasised, _ = _preemphasis(wav)
    spectrum = librosa.stft(emphasised, n_fft=N_FFT, hop_length=HOP_SAMPLES, win_length=WIN_SAMPLES,
                            window="hann", center=True, pad_mode="constant")
    return _normalised_mel(np.abs(spectrum))


class AudioRing:
    """Thread-safe ring of the most recent samples, addressed by absolute sample index.

    Sample k is the k-th sample ever written; only the last `capacity_samples` stay readable.
    Writers (microphone / file replay) and readers (processing) meet on a Condition.
    """

    def __init__(self, capacity_samples: int, sample_rate: int) -> None:
        if capacity_samples <= 0:
            raise ValueError(f"capacity_samples must be positive, got {capacity_samples}")
        self.capacity_samples = int(capacity_samples)
        self.sample_rate = int(sample_rate)
        self._buffer = np.zeros(self.capacity_samples, dtype=np.float32)
        self._written = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def written(self) -> int:
        """Total samples ever written (the sample clock)."""
        with self._cond:
            return self._written

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def write(self, samples: np.ndarray) -> None:
        """Append 1-D samples; the oldest ones beyond capacity are overwritten."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"AudioRing.write expects 1-D mono samples, got shape {samples.shape}")
        with self._cond:
            if self._closed:
                raise ValueError("AudioRing.write after close()")
            total = self._written + len(samples)
            kept = samples[-self.capacity_samples:]
            first = (total - len(kept)) % self.capacity_samples
            head = min(len(kept), self.capacity_samples - first)
            self._buffer[first:first + head] = kept[:head]
            self._buffer[:len(kept) - head] = kept[head:]
            self._written = total
            self._cond.notify_all()

    def read(self, start: int, stop: int) -> np.ndarray:
        """A copy of samples [start, stop); ValueError if any of them is evicted or not yet written."""
        with self._cond:
            oldest = max(0, self._written - self.capacity_samples)
            if not oldest <= start <= stop <= self._written:
                raise ValueError(f"samples [{start}, {stop}) are not in the ring "
                                 f"(it holds [{oldest}, {self._written}))")
            indices = np.arange(start, stop) % self.capacity_samples
            return self._buffer[indices]

    def wait_for(self, sample_index: int, timeout_s: float) -> bool:
        """Block until `written >= sample_index` or the ring is closed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._written >= sample_index or self._closed, timeout_s)

    def close(self) -> None:
        """End of stream: no more samples will come; wakes every waiter."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _FramedFeatures:
    """Features of a live stream frame by frame (Wav2Lip's mel, the ASD models' MFCCs), kept in a ring
    of `capacity_frames`: pre-emphasis carried across pushes, each frame computed in a batch as soon as
    its last sample is in, never one the ring would evict at once; `finish()` zero-pads the end.
    `push` and `window` may be called from different threads.

    A subclass names its framing: frame m covers samples [m * HOP - LEAD, m * HOP - LEAD + WIN)
    (samples before 0 are zeros), and maps pre-emphasised frames (F, WIN) to features (F, D).
    """

    WIN_SAMPLES: int
    HOP_SAMPLES: int
    LEAD_SAMPLES: int
    N_FEATURES: int
    PREEMPHASIS: float
    INPUT_SCALE: float | None = None

    def __init__(self, capacity_frames: int, sample_rate: int = MEL_SAMPLE_RATE) -> None:
        _require_16k(sample_rate, type(self).__name__)
        if capacity_frames <= 0:
            raise ValueError(f"capacity_frames must be positive, got {capacity_frames}")
        self.capacity_frames = int(capacity_frames)
        self._frames = np.zeros((self.capacity_frames, self.N_FEATURES), dtype=np.float32)
        self._preemphasis_state = np.zeros(1)
        # Pre-emphasised samples from absolute index `_tail_start` on: those the next frame needs.
        self._tail = np.zeros(self.LEAD_SAMPLES)
        self._tail_start = -self.LEAD_SAMPLES
        self._frames_ready = 0
        self._finished = False
        self._lock = threading.Lock()

    @property
    def frames_ready(self) -> int:
        """Absolute count of frames computed so far (frames 0 .. frames_ready-1)."""
        with self._lock:
            return self._frames_ready

    def push(self, samples: np.ndarray) -> None:
        """Add the next float samples in [-1, 1] and compute every frame they complete."""
        if self._finished:
            raise ValueError(f"{type(self).__name__}.push after finish()")
        samples = np.ravel(samples)
        if self.INPUT_SCALE is not None:
            samples = samples.astype(np.float64) * self.INPUT_SCALE
        emphasised, self._preemphasis_state = _preemphasis(samples, self._preemphasis_state, self.PREEMPHASIS)
        self._extend(emphasised)

    def finish(self) -> None:
        """End of stream: compute the last frames over zero padding, as the offline recipe pads."""
        if self._finished:
            return
        self._finished = True
        self._extend(np.zeros(self._end_padding(self._tail_start + len(self._tail))))

    def _end_padding(self, samples_end: int) -> int:
        raise NotImplementedError

    def _features(self, frames: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _rows(self, start: int, n: int) -> np.ndarray | None:
        """Frames [start, start+n) as (n, D) float32, or None if any is not computed, evicted or negative."""
        with self._lock:
            if start < 0 or start + n > self._frames_ready or start < self._frames_ready - self.capacity_frames:
                return None
            return self._frames[np.arange(start, start + n) % self.capacity_frames]

    def _extend(self, emphasised: np.ndarray) -> None:
        """Append pre-emphasised samples; compute and store all newly complete frames in one batch."""
        buffer = np.concatenate([self._tail, emphasised])
        samples_end = self._tail_start + len(buffer)
        lead, hop = self.LEAD_SAMPLES, self.HOP_SAMPLES
        stop_frame = max(0, (samples_end - self.WIN_SAMPLES + lead) // hop + 1)  # frames < stop_frame are complete
        first_frame = max(self._frames_ready, stop_frame - self.capacity_frames)
        if stop_frame > first_frame:
            offset = first_frame * hop - lead - self._tail_start
            frames = sliding_window_view(buffer[offset:], self.WIN_SAMPLES)[::hop][:stop_frame - first_frame]
            features = self._features(frames)
            with self._lock:
                self._frames[np.arange(first_frame, stop_frame) % self.capacity_frames] = features
                self._frames_ready = stop_frame
        keep_from = self._frames_ready * hop - lead  # the next frame's first sample
        self._tail = buffer[keep_from - self._tail_start:]
        self._tail_start = keep_from


class MelBuffer(_FramedFeatures):
    """Wav2Lip's mel computed incrementally on a live stream.

    Every frame equals (to float tolerance) the same frame of `wav2lip_melspectrogram` of the whole
    stream. Frame m needs samples [m*200 - 400, m*200 + 400) (samples before 0 are zeros), so it is
    computed as soon as sample m*200 + 399 has been pushed; `finish()` zero-pads the end like librosa's
    centre padding.
    """

    WIN_SAMPLES, HOP_SAMPLES, LEAD_SAMPLES, N_FEATURES, PREEMPHASIS = WIN_SAMPLES, HOP_SAMPLES, HALF_WIN_SAMPLES, N_MELS, PREEMPHASIS

    def __init__(self, capacity_frames: int, sample_rate: int = MEL_SAMPLE_RATE) -> None:
        super().__init__(capacity_frames, sample_rate)
        self._window = librosa.filters.get_window("hann", WIN_SAMPLES, fftbins=True)

    def window(self, start: int, n: int = 16) -> np.ndarray | None:
        """Frames [start, start+n) as (80, n) float32, or None if any is not computed, evicted or negative."""
        rows = self._rows(start, n)
        return None if rows is None else rows.T

    def _end_padding(self, samples_end: int) -> int:
        last_frame = samples_end // HOP_SAMPLES  # librosa gives 1 + len // hop frames
        return max(0, last_frame * HOP_SAMPLES + HALF_WIN_SAMPLES - samples_end)

    def _features(self, frames: np.ndarray) -> np.ndarray:
        return _normalised_mel(np.abs(np.fft.rfft(frames * self._window, n=N_FFT, axis=1)).T).T


@lru_cache(maxsize=1)
def _mfcc_filterbank() -> np.ndarray:
    """python_speech_features' 26 mel filters over the 257 bins of a 512-point FFT, computed once."""
    basis = get_filterbanks(MFCC_N_FILTERS, MFCC_N_FFT, MEL_SAMPLE_RATE)
    basis.setflags(write=False)
    return basis


def _mfcc_of_frames(frames: np.ndarray) -> np.ndarray:
    """Pre-emphasised frames (F, 400) -> (F, 13) float32: python_speech_features' `fbank` and `mfcc`
    after their framing step, zero-energy guards included (silence gives log(eps), not -inf)."""
    power = powspec(frames, MFCC_N_FFT)
    tiny = np.finfo(float).eps
    energy = power.sum(axis=1)
    bands = power @ _mfcc_filterbank().T
    cepstra = dct(np.log(np.where(bands == 0, tiny, bands)), type=2, axis=1, norm="ortho")[:, :MFCC_N_CEPSTRA]
    cepstra = lifter(cepstra, MFCC_CEP_LIFTER)
    cepstra[:, 0] = np.log(np.where(energy == 0, tiny, energy))  # appendEnergy
    return cepstra.astype(np.float32)


class MfccBuffer(_FramedFeatures):
    """LR-ASD's MFCCs computed incrementally on a live stream.

    Every row equals (to float tolerance) the same row of `python_speech_features.mfcc` of the whole
    stream scaled to int16 range. Row j covers samples [160 j, 160 j + 400), so it is computed as soon
    as sample 160 j + 399 has been pushed; `finish()` zero-pads the end as the library does (a last
    partial row, or one row for a stream shorter than 400 samples). Video frame i at 25 fps goes with
    rows 4i .. 4i+3.
    """

    WIN_SAMPLES, HOP_SAMPLES, LEAD_SAMPLES, N_FEATURES = MFCC_WIN_SAMPLES, MFCC_HOP_SAMPLES, 0, MFCC_N_CEPSTRA
    PREEMPHASIS, INPUT_SCALE = MFCC_PREEMPHASIS, INT16_FULL_SCALE

    def window(self, start: int, n: int) -> np.ndarray | None:
        """Rows [start, start+n) as (n, 13) float32, or None if any is not computed, evicted or negative."""
        return self._rows(start, n)

    def _end_padding(self, samples_end: int) -> int:
        if samples_end == 0:
            return 0  # python_speech_features has no row for an empty signal (it fails on one)
        rows = 1 + -(-max(0, samples_end - MFCC_WIN_SAMPLES) // MFCC_HOP_SAMPLES)  # framesig's count
        return max(0, (rows - 1) * MFCC_HOP_SAMPLES + MFCC_WIN_SAMPLES - samples_end)

    def _features(self, frames: np.ndarray) -> np.ndarray:
        return _mfcc_of_frames(frames)


class VoiceActivity:
    """Silero VAD on the stream: a speech probability per 512-sample chunk, kept for `history_s`.

    Time 0 is the first sample pushed. Chunks are run strictly in order (the model is recurrent).
    Needs onnxruntime besides silero-vad.
    """

    def __init__(self, sample_rate: int = MEL_SAMPLE_RATE, history_s: float = 60.0) -> None:
        import torch

        _require_16k(sample_rate, "Silero VAD")
        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # its import sets torch's global thread count to 1

        torch.set_num_threads(threads)
        self.sample_rate = sample_rate
        with warnings.catch_warnings():  # silero's own importlib deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            # The ONNX model bundled in the package (no download), run by onnxruntime on one thread of
            # its own: the TorchScript one shares torch's thread pool with the SyncNet and, on a busy
            # 2-core machine, took up to 100 ms a chunk instead of 0.3 ms. Same probabilities (< 1e-6).
            try:
                self._model = load_silero_vad(onnx=True)
            except ModuleNotFoundError as exc:
                raise RtdiarError(f"Silero VAD needs {exc.name}: pip install {exc.name}") from None
        self._lock = threading.Lock()
        self._probs: deque[float] = deque(maxlen=max(1, int(history_s * sample_rate / VAD_CHUNK_SAMPLES)))
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next sample pushed is time 0 again."""
        self._model.reset_states()
        self._pending = np.zeros(0, dtype=np.float32)
        with self._lock:
            self._probs.clear()
            self._chunks_done = 0

    def push(self, samples: np.ndarray) -> None:
        """Add the next samples; run the model on every chunk they complete."""
        import torch

        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).ravel()])
        n_chunks = len(audio) // VAD_CHUNK_SAMPLES
        chunks = audio[:n_chunks * VAD_CHUNK_SAMPLES].reshape(n_chunks, VAD_CHUNK_SAMPLES)
        probs = [float(self._model(torch.from_numpy(chunk), self.sample_rate)) for chunk in chunks]
        self._pending = audio[n_chunks * VAD_CHUNK_SAMPLES:]
        with self._lock:
            self._probs.extend(probs)
            self._chunks_done += n_chunks

    def speech_prob(self, start_s: float, stop_s: float) -> float | None:
        """Max speech probability of the chunks overlapping [start_s, stop_s).

        None if any of them is not computed yet or already forgotten, or the interval ends before 0.
        An empty interval counts as the chunk holding `start_s`.
        """
        if stop_s < 0:
            return None
        start = max(0, int(np.floor(start_s * self.sample_rate)))
        stop = max(start + 1, int(np.ceil(stop_s * self.sample_rate)))
        first, last = start // VAD_CHUNK_SAMPLES, (stop - 1) // VAD_CHUNK_SAMPLES
        with self._lock:
            oldest = self._chunks_done - len(self._probs)
            if first < oldest or last >= self._chunks_done:
                return None
            return max(self._probs[i - oldest] for i in range(first, last + 1))
