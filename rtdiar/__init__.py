"""rtdiar: real-time audio-visual speaker diarization by lip-sync."""

from rtdiar.errors import RtdiarError
from rtdiar.types import FaceResult, FrameResult

__all__ = ["RtdiarError", "FaceResult", "FrameResult"]
__version__ = "0.1.0"
