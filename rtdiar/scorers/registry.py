"""Model weights by name, as pyannote and Hugging Face users know it: rtdiar's own files ship in
weights/; third-party ones are fetched once from their pinned home into a cache, checked by sha256."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rtdiar.config import PROJECT_ROOT
from rtdiar.errors import RtdiarError

SHIPPED_DIR = PROJECT_ROOT / "weights"
TIMEOUT_S = 15.0  # connecting and each read: an offline machine answers fast
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class KnownModel:
    """One model users can name with --weights; `url` None means it ships with rtdiar."""

    name: str
    file: str
    arch: str
    size_bytes: int
    licence: str
    trained_on: str
    source: str
    url: str | None = None
    sha256: str | None = None

    @property
    def shipped(self) -> bool:
        return self.url is None


_LRASD = "https://github.com/Junhua-Liao/LR-ASD/raw/1b6dcd2d8fc2895683de6508ec6294ec47d388ca/weight/"
_LIGHTASD = "https://github.com/Junhua-Liao/Light-ASD/raw/ed38c232de5efe0261dbd68627c0ade7cdfe14eb/weight/"
_OWN_DATA = "~110 people (weights/MODEL_CARD.md)"
_TALKSET = "AVA + TalkSet (VoxCeleb2, LRS3: research-only)"

MODELS: dict[str, KnownModel] = {m.name: m for m in (
    KnownModel("rtdiar-pair", "rtdiar_syncnet.safetensors", "compact_pair", 16_375_384, "MIT", _OWN_DATA,
               "rtdiar (default without lrasd-ava)"),
    KnownModel("rtdiar-lips", "rtdiar_syncnet_lips.safetensors", "compact_lips", 14_917_232, "MIT", _OWN_DATA,
               "rtdiar"),
    KnownModel("rtdiar-distilled", "rtdiar_distilled.safetensors", "distilled", 7_523_628, "MIT",
               "train/ (~110 people), LR-ASD's scores as its targets", "rtdiar"),
    KnownModel("rtdiar-lrasd", "rtdiar_sync_lrasd.safetensors", "sync_head", 5_269_856, "MIT",
               "its head: train/ (~110 people); reads lrasd-ava's front ends", "rtdiar"),
    KnownModel("rtdiar-joint", "rtdiar_joint.safetensors", "joint", 196, "MIT",
               "its fusion: dev/wild people; reads rtdiar-lrasd (lrasd-ava) and rtdiar-distilled",
               "rtdiar (default with lrasd-ava)"),
    KnownModel("lrasd-ava", "lrasd_pretrain_AVA.model", "lrasd", 3_426_337, "MIT", "AVA-ActiveSpeaker",
               "LR-ASD, IJCV 2025", _LRASD + "pretrain_AVA.model",
               "85e6c77fc981595234790d1e128ebb60352d37726b2445e0ef8891e2512fe9e3"),
    KnownModel("lrasd-talkset", "lrasd_finetuning_TalkSet.model", "lrasd", 3_426_337, "MIT", _TALKSET,
               "LR-ASD, IJCV 2025", _LRASD + "finetuning_TalkSet.model",
               "6b4ef53694e874e96cf630198dc479c78aebb3993bbf166aee3d926dfe7d9342"),
    KnownModel("lightasd-ava", "lightasd_pretrain_AVA_CVPR.model", "lightasd", 4_175_289, "MIT", "AVA-ActiveSpeaker",
               "Light-ASD, CVPR 2023", _LIGHTASD + "pretrain_AVA_CVPR.model",
               "d44bc3ea7baa8e0946fa3921311714a630ed8b90a1928fab0dbe30d918909317"),
    KnownModel("lightasd-talkset", "lightasd_finetuning_TalkSet.model", "lightasd", 4_175_289, "MIT", _TALKSET,
               "Light-ASD, CVPR 2023", _LIGHTASD + "finetuning_TalkSet.model",
               "efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5"),
)}


def weights_dir() -> Path:
    """Where downloads go: $RTDIAR_WEIGHTS_DIR, else the user's cache (read on every call, so tests can move it)."""
    override = os.environ.get("RTDIAR_WEIGHTS_DIR")
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtdiar" / "weights"


def local_path(model: KnownModel) -> Path:
    """Where the model's file is, or would be once downloaded."""
    return (SHIPPED_DIR if model.shipped else weights_dir()) / model.file


BEST = "auto"  # the best judgement this machine has (`best_available`)
BETTER, FALLBACK, NEEDED = "rtdiar-joint", "rtdiar-pair", "lrasd-ava"  # BETTER reads NEEDED's front ends


def best_available() -> KnownModel:
    """rtdiar-joint once lrasd-ava is downloaded, else rtdiar's own lip-sync experts."""
    return MODELS[BETTER] if local_path(MODELS[NEEDED]).exists() else MODELS[FALLBACK]


def judgement_line(weights: str) -> str:
    """The one start-up line: which judgement runs, and how to get the better one where it is not."""
    name = best_available().name if weights == BEST else str(weights)
    line = f"rtdiar: judging with {name}"
    if name == BETTER:
        return f"{line} (LR-ASD's speaking score, checked against the sound by two sync heads of rtdiar's)"
    if not local_path(MODELS[NEEDED]).exists():
        return f"{line}; for the better {BETTER}: rtdiar weights download {NEEDED}"
    return line


def resolve(name_or_path: str | Path) -> Path:
    """A known name's file on this machine (`auto`: the best available); anything else is a path,
    returned as it is."""
    if str(name_or_path) == BEST:
        return local_path(best_available())
    model = MODELS.get(str(name_or_path))
    if model is None:
        return Path(name_or_path)
    path = local_path(model)
    if not model.shipped and not path.exists():
        raise RtdiarError(f"model {model.name} is not downloaded yet: rtdiar weights download {model.name}")
    return path


def known(name: str) -> KnownModel:
    model = MODELS.get(name)
    if model is None:
        raise RtdiarError(f"unknown model {name!r}: known are {', '.join(MODELS)} (rtdiar weights lists them)")
    return model


def is_installed(model: KnownModel) -> bool:
    """Present with the pinned checksum (a shipped file is taken as it is)."""
    path = local_path(model)
    if model.shipped or not path.exists():
        return path.exists()
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() == model.sha256


def download(name: str, url: str | None = None) -> Path:
    """Fetch a third-party model from its pinned URL (or `url`) into the cache, checked by sha256;
    one already there with the right checksum is kept, and a shipped one is always there."""
    model = known(name)
    if model.shipped or is_installed(model):
        return local_path(model)
    url = url or model.url
    import http.client
    import urllib.error
    import urllib.request

    with _atomic_install(model) as out:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                expected = int(response.headers.get("Content-Length") or 0) or None
                got = _copy(response, out, expected or model.size_bytes, model.name)
        except urllib.error.HTTPError as exc:
            raise RtdiarError(f"{model.name}: download from {url} failed: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise RtdiarError(f"{model.name}: download from {url} failed: {_one_line(exc.reason)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RtdiarError(f"{model.name}: download from {url} failed: {_one_line(exc)}") from None
        if expected is not None and got != expected:
            raise RtdiarError(f"{model.name}: download from {url} cut short: {got} of {expected} bytes; nothing kept")
    return local_path(model)


def install_from(name: str, folder: Path) -> Path:
    """Install a third-party model from a local copy (offline machines, CI): the same file name, checked by sha256."""
    model = known(name)
    if model.shipped:
        return local_path(model)
    source = Path(folder) / model.file
    if not source.is_file():
        raise RtdiarError(f"{model.name}: no {model.file} in {folder}")
    with _atomic_install(model) as out, source.open("rb") as f:
        _copy(f, out, source.stat().st_size, model.name)
    return local_path(model)


class _Hashing:
    """A file being written that hashes what goes through it, so nothing is read twice."""

    def __init__(self, f: BinaryIO) -> None:
        self.file = f
        self.digest = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.digest.update(chunk)


@contextmanager
def _atomic_install(model: KnownModel) -> Iterator[_Hashing]:
    """Write to a .partial file, check its sha256, rename it into place; any failure leaves no file behind."""
    final = local_path(model)
    partial = final.with_name(f"{final.name}.{os.getpid()}.partial")  # per process: two installs never mix
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RtdiarError(f"{model.name}: cannot make the weights folder: {_one_line(exc)}") from None
    try:
        with partial.open("wb") as f:
            out = _Hashing(f)
            yield out
        if out.digest.hexdigest() != model.sha256:
            raise RtdiarError(f"{model.name}: sha256 mismatch (got {out.digest.hexdigest()}, "
                              f"pinned {model.sha256}); nothing kept")
        os.replace(partial, final)
    except OSError as exc:  # the cache folder, or a local copy, unreadable or unwritable
        raise RtdiarError(f"{model.name}: not installed: {_one_line(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)


def _copy(source: BinaryIO, out: _Hashing, total_bytes: int, label: str) -> int:
    """Stream `source` into `out` with a progress bar (shown on a terminal only); returns the bytes copied."""
    from tqdm import tqdm

    copied = 0
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label, disable=None, leave=False) as bar:
        while chunk := source.read(CHUNK_BYTES):
            out.write(chunk)
            copied += len(chunk)
            bar.update(len(chunk))
    return copied


def _one_line(value: object) -> str:
    """An OS error's words and file without its errno, or the first line of anything else."""
    text = str(value)
    if isinstance(value, OSError) and value.strerror:
        text = value.strerror if value.filename is None else f"{value.strerror}: {value.filename}"
    return (text.splitlines() or [""])[0]


def format_table() -> str:
    """`rtdiar weights`: every known model, and whether and where it is on this machine."""
    header = ("name", "arch", "size", "licence", "trained on", "source", "on this machine")
    rows = [header] + [(m.name, m.arch, f"{m.size_bytes / 1e6:.1f} MB", m.licence, m.trained_on, m.source,
                        _where(m)) for m in MODELS.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows]
    return "\n".join([*lines, "get one: rtdiar weights download NAME (or all); use it: rtdiar --weights NAME"])


def _where(model: KnownModel) -> str:
    path = local_path(model)
    if not path.exists():
        return "no"
    return f"shipped: {path.relative_to(PROJECT_ROOT)}" if model.shipped else f"yes: {path}"


def build_weights_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtdiar weights",
        description="Models by name, for --weights NAME: rtdiar's own ship with it; third-party ones download once "
                    "(pinned URL, sha256 checked) into $RTDIAR_WEIGHTS_DIR or ~/.cache/rtdiar/weights. "
                    "Without a command: list them.")
    actions = parser.add_subparsers(dest="action", metavar="{list,download}")
    actions.add_parser("list", help="every known model and whether it is on this machine (the default)")
    get = actions.add_parser("download", help="fetch third-party models (already present ones are kept)")
    get.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(MODELS)}, or all")
    get.add_argument("--from", dest="from_dir", metavar="DIR", type=Path,
                     help="install from a local copy of the files (offline machines, CI: ../shared/weights)")
    return parser


def weights_command(args: argparse.Namespace) -> int:
    """`rtdiar weights [list | download NAME... [--from DIR]]`."""
    if args.action != "download":
        print(format_table())
        return 0
    models = _requested(args.names)
    fetch: Callable[[str], Path] = download if args.from_dir is None else lambda n: install_from(n, args.from_dir)
    for model in models:
        print(f"{model.name}: {fetch(model.name)}")
    return 0


def _requested(names: list[str]) -> list[KnownModel]:
    """Every name checked before anything is fetched; `all` is every third-party model."""
    models = [known(name) for name in dict.fromkeys(names) if name != "all"]
    return [m for m in MODELS.values() if not m.shipped] if "all" in names else models
