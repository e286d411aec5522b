"""Models by name: downloads from a local HTTP server (never the internet), --from installs, the listing,
and a known name that is not on this machine as one line naming the command that gets it."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rtdiar.cli import main
from rtdiar.config import PROJECT_ROOT, load_config
from rtdiar.errors import RtdiarError
from rtdiar.scorers import registry

SMALL = b"not really weights, only bytes to fetch\n" * 2000
NOT_DOWNLOADED = "model lrasd-ava is not downloaded yet: rtdiar weights download lrasd-ava"


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves `files` by path; under /cut/ it promises the whole file, sends half and hangs up."""

    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        cut = self.path.startswith("/cut/")
        body = self.files.get(self.path.removeprefix("/cut"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if cut else body)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[bytes], str]]:
    """`serve(body)` -> the URL of `body` on a server on 127.0.0.1, in a thread."""
    files: dict[str, bytes] = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Files,), {"files": files}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def add(body: bytes) -> str:
        path = f"/file{len(files)}.model"
        files[path] = body
        return f"http://127.0.0.1:{server.server_port}{path}"

    yield add
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("RTDIAR_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture
def small_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """lrasd-ava pinned to SMALL's checksum, so the small file is the right one."""
    entry = dataclasses.replace(registry.MODELS["lrasd-ava"], sha256=hashlib.sha256(SMALL).hexdigest(),
                                size_bytes=len(SMALL))
    monkeypatch.setitem(registry.MODELS, "lrasd-ava", entry)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_download_with_the_right_checksum_lands_in_the_cache(cache: Path, serve, small_pinned) -> None:
    path = registry.download("lrasd-ava", serve(SMALL))
    assert path == cache / "lrasd_pretrain_AVA.model"
    assert path.read_bytes() == SMALL
    assert sorted(p.name for p in cache.iterdir()) == [path.name]
    assert registry.resolve("lrasd-ava") == path
    assert registry.download("lrasd-ava", "http://127.0.0.1:9/never-asked") == path  # present: nothing fetched


def test_download_of_the_published_file_checks_its_pinned_sha256(cache: Path, serve, shared_dir: Path,
                                                                 tmp_path: Path) -> None:
    copy = tmp_path / "copy.model"
    shutil.copyfile(shared_dir / "weights" / "lrasd_pretrain_AVA.model", copy)
    path = registry.download("lrasd-ava", serve(copy.read_bytes()))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == registry.MODELS["lrasd-ava"].sha256


def test_a_wrong_checksum_keeps_nothing(cache: Path, serve) -> None:
    with pytest.raises(RtdiarError) as exc:
        registry.download("lrasd-ava", serve(SMALL))
    assert "sha256 mismatch" in _one_line(exc) and "nothing kept" in str(exc.value)
    assert not any(cache.iterdir())


def test_a_download_cut_short_keeps_nothing(cache: Path, serve, small_pinned) -> None:
    url = serve(SMALL).replace("/file", "/cut/file")
    with pytest.raises(RtdiarError) as exc:
        registry.download("lrasd-ava", url)
    half = len(SMALL) // 2
    assert _one_line(exc) == f"lrasd-ava: download from {url} cut short: {half} of {len(SMALL)} bytes; nothing kept"
    assert not any(cache.iterdir())


def test_an_unreachable_server_is_one_line(cache: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RtdiarError) as exc:
        registry.download("lrasd-ava", f"http://127.0.0.1:{port}/x.model")
    assert _one_line(exc) == f"lrasd-ava: download from http://127.0.0.1:{port}/x.model failed: Connection refused"
    assert not cache.exists() or not any(cache.iterdir())


def test_a_missing_file_on_the_server_is_one_line(cache: Path, serve) -> None:
    url = serve(SMALL).replace("/file", "/gone")
    with pytest.raises(RtdiarError) as exc:
        registry.download("lrasd-ava", url)
    assert _one_line(exc) == f"lrasd-ava: download from {url} failed: HTTP 404 Not Found"


def test_install_from_a_local_copy(cache: Path, shared_dir: Path, capsys) -> None:
    assert main(["weights", "download", "lrasd-ava", "lightasd-talkset", "--from", str(shared_dir / "weights")]) == 0
    out = capsys.readouterr().out.splitlines()
    for name in ("lrasd-ava", "lightasd-talkset"):
        path = registry.resolve(name)
        assert path.parent == cache and f"{name}: {path}" in out
        assert hashlib.sha256(path.read_bytes()).hexdigest() == registry.MODELS[name].sha256


def test_install_from_a_tampered_copy_keeps_nothing(cache: Path, tmp_path: Path, capsys) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "lrasd_pretrain_AVA.model").write_bytes(SMALL)
    assert main(["weights", "download", "all", "--from", str(copies)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rtdiar: error: lrasd-ava: sha256 mismatch")
    assert not cache.exists() or not any(cache.iterdir())


def test_the_listing_names_every_model_and_says_which_are_here(cache: Path, shared_dir: Path, capsys) -> None:
    registry.install_from("lrasd-ava", shared_dir / "weights")
    assert main(["weights"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(registry.MODELS) <= set(rows)
    assert rows["rtdiar-pair"].endswith("shipped: weights/rtdiar_syncnet.safetensors")
    assert rows["lrasd-ava"].endswith(f"yes: {cache / 'lrasd_pretrain_AVA.model'}")
    assert rows["lrasd-talkset"].endswith(" no")


def test_the_listed_sizes_are_the_files(shared_dir: Path) -> None:
    for model in registry.MODELS.values():
        folder = PROJECT_ROOT / "weights" if model.shipped else shared_dir / "weights"
        assert (folder / model.file).stat().st_size == model.size_bytes, model.name


def test_an_unknown_name_is_one_line(capsys) -> None:
    assert main(["weights", "download", "lrasd"]) == 2
    assert capsys.readouterr().err.startswith("rtdiar: error: unknown model 'lrasd': known are rtdiar-pair,")


def test_a_known_name_not_downloaded_names_the_command(cache: Path) -> None:
    with pytest.raises(RtdiarError) as exc:
        registry.resolve("lrasd-ava")
    assert _one_line(exc) == NOT_DOWNLOADED


def test_names_and_paths_in_the_config(cache: Path, shared_dir: Path) -> None:
    model = load_config(None, {"model.weights": "rtdiar-lips"}).model
    assert model.weights_path() == PROJECT_ROOT / "weights" / "rtdiar_syncnet_lips.safetensors"
    assert load_config().model.weights_path() == PROJECT_ROOT / "weights" / "rtdiar_syncnet.safetensors"
    assert registry.resolve("some/file.pth") == Path("some/file.pth")
    installed = registry.install_from("lrasd-ava", shared_dir / "weights")
    assert load_config(None, {"model.weights": "lrasd-ava"}).model.weights_path() == installed


def test_the_cli_says_how_to_get_a_model_not_downloaded(cache: Path, dev_clip: Path, capsys) -> None:
    assert main(["--video", str(dev_clip), "--no-window", "--weights", "lrasd-ava"]) == 2
    assert capsys.readouterr().err == f"rtdiar: error: {NOT_DOWNLOADED}\n"
