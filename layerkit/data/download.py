"""``layerkit data download``: fetch the IDX files and verify their SHA-256.

The pinned checksums are of the *uncompressed* IDX contents, so a mirror that
re-gzips the files (different gzip headers, same data) still verifies. The
MNIST sums match the original files published by LeCun et al.; the
Fashion-MNIST sums were taken from Debian's ``dataset-fashion-mnist`` package.
A file is written under a temporary name and only renamed into place once it
verifies, so a failed or tampered download never leaves a file that looks valid.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from layerkit.errors import DataError, RegistryError
from layerkit.data import cache_dir


@dataclass(frozen=True)
class Source:
    url_base: str
    sha256: dict[str, str]  # file name -> SHA-256 of the gunzipped contents


SOURCES: dict[str, Source] = {
    "mnist": Source(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        {
            "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion_mnist": Source(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
}

CHUNK = 1 << 16


def content_sha256(path: Path) -> str:
    """SHA-256 of the file's contents, gunzipped first when it is gzip data."""
    digest = hashlib.sha256()
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    return digest.hexdigest()


def default_dir(name: str) -> Path:
    env = os.environ.get("LAYERKIT_DATA_DIR")
    return (Path(env).expanduser() if env else cache_dir()) / name


def download(name: str, dest: str | Path | None = None, url_base: str | None = None,
             sha256: dict[str, str] | None = None, timeout: float = 60.0,
             report: Callable[[str], None] | None = None) -> Path:
    """Download dataset ``name`` into ``dest`` (default: ``$LAYERKIT_DATA_DIR/NAME`` or the cache),
    skipping files already there and valid. Returns the directory."""
    if name not in SOURCES:
        raise RegistryError(f"no download source for {name!r} (available: {', '.join(sorted(SOURCES))})")
    source = SOURCES[name]
    sums = sha256 or source.sha256
    base = url_base or source.url_base
    if not base.endswith("/"):
        base += "/"
    dest = Path(dest).expanduser() if dest else default_dir(name)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create directory ({exc.strerror or exc})") from None
    say = report or (lambda _msg: None)
    for fname, want in sums.items():
        target = dest / fname
        if target.is_file() and content_sha256(target) == want:
            say(f"{target}: already present, checksum OK")
            continue
        url = base + fname
        say(f"downloading {url}")
        _fetch_verified(url, target, want, timeout)
        say(f"{target}: checksum OK")
    return dest


def _fetch_verified(url: str, target: Path, want: str, timeout: float) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise DataError(f"{url}: download failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"{url}: download failed: {reason}") from None
        try:
            got = content_sha256(Path(tmp))
        except DataError as exc:
            raise DataError(f"{url}: the download is not valid gzip data ({str(exc).split(': ', 1)[-1]})") from None
        if got != want:
            raise DataError(f"{url}: SHA-256 mismatch (got {got}, expected {want}); the file was not kept")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
