"""``layerkit data download`` against a local HTTP server (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
import time

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.data import download as dl
from layerkit.data.builtin import IDX_FILES
from layerkit.data.idx import write_idx
from layerkit.errors import DataError


@pytest.fixture
def server(tmp_path):
    """Serve generated MNIST-shaped IDX files from 127.0.0.1; yield (url, checksums)."""
    root = tmp_path / "served"
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10, rng.integers(0, 256, (3, 28, 28)),
              np.arange(3))
    sums = {}
    for stem, array in zip(IDX_FILES, arrays, strict=True):
        write_idx(root / f"{stem}.gz", array)
        raw = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) \
            + np.asarray(array, dtype=np.uint8).tobytes()
        sums[f"{stem}.gz"] = hashlib.sha256(raw).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", sums, root
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_is_then_loadable(server, tmp_path):
    url, sums, _ = server
    dest = dl.download("mnist", tmp_path / "got", url_base=url, sha256=sums)
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)
    from layerkit.data import load_data
    from layerkit.plugins.manager import load_registry
    data = load_data("mnist", data_dir=dest, registry=load_registry(entry_points=False))
    assert data.x_train.shape == (6, 1, 28, 28)
    messages = []
    dl.download("mnist", dest, url_base=url, sha256=sums, report=messages.append)
    assert all("already present" in m for m in messages)


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    url, sums, _ = server
    wrong = {**sums, "t10k-labels-idx1-ubyte.gz": "0" * 64}
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: SHA-256 mismatch"):
        dl.download("mnist", tmp_path / "got", url_base=url, sha256=wrong)
    names = sorted(p.name for p in (tmp_path / "got").iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in names and not any(n.endswith(".part") for n in names)


def test_cli_download(server, tmp_path, monkeypatch, capsys):
    url, sums, _ = server
    monkeypatch.setitem(dl.SOURCES, "mnist", dl.Source(url, sums))
    assert main(["data", "download", "mnist", "--dir", str(tmp_path / "d")]) == 0
    assert "--data-dir" in capsys.readouterr().out
    # the real pinned checksums do not match generated files: exit 2, one line
    monkeypatch.setitem(dl.SOURCES, "fashion_mnist", dl.Source(url, dl.SOURCES["fashion_mnist"].sha256))
    assert main(["data", "download", "fashion_mnist", "--dir", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and "Traceback" not in err


def test_missing_file_and_unknown_dataset(server, tmp_path, capsys):
    url, sums, root = server
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="HTTP 404"):
        dl.download("mnist", tmp_path / "got", url_base=url, sha256=sums)
    assert main(["data", "download", "cifar10", "--dir", str(tmp_path / "x")]) == 2
    assert "no download source" in capsys.readouterr().err


class Trickle(http.server.BaseHTTPRequestHandler):
    """Sends a byte every 0.2 s, for ever: a per-read timeout never fires."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\x1f")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_a_trickling_server_meets_the_overall_deadline(tmp_path, capsys):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        started = time.monotonic()
        rc = main(["data", "download", "mnist", "--dir", str(tmp_path / "d"), "--timeout", "1",
                   "--url-base", f"http://127.0.0.1:{httpd.server_address[1]}/"])
        assert time.monotonic() - started < 10
    finally:
        httpd.shutdown()
        httpd.server_close()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "did not finish within 1 s" in err and "--timeout" in err
    assert not any((tmp_path / "d").iterdir())  # no partial file left behind


def test_file_url_mirror_works_offline_and_files_respect_the_umask(server, tmp_path):
    _, sums, root = server
    old = os.umask(0o022)
    try:
        dest = dl.download("mnist", tmp_path / "got", url_base=root.as_uri(), sha256=sums)
    finally:
        os.umask(old)
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)
    assert {oct(p.stat().st_mode & 0o777) for p in dest.iterdir()} == {"0o644"}
    with pytest.raises(DataError, match="no such file"):
        dl.download("mnist", tmp_path / "x", url_base=(tmp_path / "nothing").as_uri(), sha256=sums)


def test_published_file_checksum_is_checked_by_pooch(server, tmp_path, monkeypatch):
    url, sums, _ = server
    monkeypatch.setattr(dl, "RETRIES", 0)
    files = {name: "0" * 64 for name in sums}
    monkeypatch.setitem(dl.SOURCES, "mnist", dl.Source(url, sums, files))
    with pytest.raises(DataError, match="the file was not kept"):
        dl.download("mnist", tmp_path / "got")
    assert not any(p.name.endswith(".gz") for p in (tmp_path / "got").iterdir())


def test_a_corrupt_file_already_there_is_fetched_again(server, tmp_path):
    url, sums, _ = server
    dest = tmp_path / "got"
    dest.mkdir()
    (dest / "train-labels-idx1-ubyte.gz").write_bytes(b"junk")
    dl.download("mnist", dest, url_base=url, sha256=sums)
    assert dl.content_sha256(dest / "train-labels-idx1-ubyte.gz") == sums["train-labels-idx1-ubyte.gz"]


class Silent(http.server.BaseHTTPRequestHandler):
    """Accepts the connection and the request, then never answers."""

    def do_GET(self):
        time.sleep(5)

    def log_message(self, *args):
        pass


class QuietAfterHeaders(Trickle):
    """Sends the headers and ten bytes, then nothing."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.wfile.write(b"\x1f" * 10)
        self.wfile.flush()
        time.sleep(5)


def _serve(handler):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd


@pytest.mark.parametrize("handler, says", [(Silent, "sent no answer within 0.5 s"),
                                           (QuietAfterHeaders, "sent nothing for 0.5 s"),
                                           (Trickle, "under 1024 bytes per 0.5 s")])
def test_a_quiet_or_trickling_server_meets_the_idle_timeout(handler, says, tmp_path, capsys):
    # a 30 s deadline: only the idle timeout (or the low-speed rule) can stop these within seconds
    httpd = _serve(handler)
    try:
        started = time.monotonic()
        rc = main(["data", "download", "mnist", "--dir", str(tmp_path / "d"), "--timeout", "30",
                   "--idle-timeout", "0.5", "--url-base", f"http://127.0.0.1:{httpd.server_address[1]}/"])
        took = time.monotonic() - started
    finally:
        httpd.shutdown()
        httpd.server_close()
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and says in err and "--idle-timeout" in err, err
    assert took < 5  # not retried: a server that went quiet once gets no second wait
    assert not any((tmp_path / "d").iterdir())


def test_the_python_function_takes_the_idle_timeout(tmp_path):
    httpd = _serve(Silent)
    try:
        with pytest.raises(DataError, match="sent no answer within 0.3 s"):
            dl.download("mnist", tmp_path / "d", url_base=f"http://127.0.0.1:{httpd.server_address[1]}/",
                        idle_timeout=0.3)
        with pytest.raises(DataError, match="idle timeout 0"):
            dl.download("mnist", tmp_path / "d", idle_timeout=0)
    finally:
        httpd.shutdown()
        httpd.server_close()
