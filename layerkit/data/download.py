"""``layerkit data download``: fetch the IDX files through pooch and verify them.

pooch does the transport: the download goes to a temporary file beside the target and is
renamed into place only when complete, failed transfers are retried, and for the default
MNIST source the SHA-256 of each ``.gz`` file as published is checked. layerkit then
checks the SHA-256 of the *uncompressed* IDX contents against its pinned sums, so a
mirror given with ``--url-base`` that re-gzips the files (different gzip headers, same
data) still verifies, and a tampered file is never kept. The MNIST sums match the
original files published by LeCun et al.; the Fashion-MNIST sums were taken from
Debian's ``dataset-fashion-mnist`` package.

Downloads have an overall deadline (``--timeout``, default 600 s for the whole
command) and an idle timeout (``--idle-timeout``, default 30 s): a server that sends no
byte for that long fails at once, and so does one that sends less than 1 KiB in any such
span (a trickle of a byte every few seconds), with a clear error instead of running on
to the deadline. ``file://`` URLs copy from a local folder (offline mirrors).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import time
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from layerkit.errors import DataError, RegistryError
from layerkit.data import cache_dir
from layerkit.fileio import file_mode

#: ``progress(file name, bytes done, total bytes or None)``
Progress = Callable[[str, int, int | None], None]

@dataclass(frozen=True)
class Source:
    """Where a downloadable dataset's files are published, and the SHA-256 each must have."""

    url_base: str
    sha256: dict[str, str]  # file name -> SHA-256 of the gunzipped contents
    #: file name -> SHA-256 of the file as published at ``url_base`` (pooch checks it)
    file_sha256: dict[str, str] = field(default_factory=dict)


SOURCES: dict[str, Source] = {
    "mnist": Source(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        {
            "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        # the original .gz files (their MD5 sums are the published ones)
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
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


DEFAULT_TIMEOUT = 600.0
DEFAULT_IDLE_TIMEOUT = 30.0
#: the low-speed rule: less than this many bytes in any idle-timeout span stops the download
MIN_BYTES_PER_IDLE = 1024
RETRIES = 2


def download(name: str, dest: str | Path | None = None, url_base: str | None = None,
             sha256: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
             report: Callable[[str], None] | None = None, progress: Progress | None = None,
             idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> Path:
    """Download dataset ``name`` into ``dest`` (default: ``$LAYERKIT_DATA_DIR/NAME`` or the cache),
    skipping files already there and valid; all of it within ``timeout`` seconds, and stopped when
    the server sends nothing for ``idle_timeout`` seconds or less than 1 KiB in any such span.
    ``progress`` is an optional ``progress(file, done_bytes, total_bytes_or_None)`` callback.
    Returns the directory."""
    if name not in SOURCES:
        raise RegistryError(f"no download source for {name!r} (available: {', '.join(sorted(SOURCES))})")
    if not timeout or timeout <= 0:
        raise DataError(f"timeout {timeout!r}: give a number of seconds above 0")
    if not idle_timeout or idle_timeout <= 0:
        raise DataError(f"idle timeout {idle_timeout!r}: give a number of seconds above 0")
    source = SOURCES[name]
    sums = sha256 or source.sha256
    base = url_base or source.url_base
    if not base.endswith("/"):
        base += "/"
    # the published .gz checksums hold for the source's own files only: a mirror may re-gzip
    file_sums = source.file_sha256 if (base == source.url_base and sha256 is None) else {}
    dest = Path(dest).expanduser() if dest else default_dir(name)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create directory ({exc.strerror or exc})") from None
    say = report or (lambda _msg: None)
    limits = _Limits(time.monotonic() + float(timeout), float(timeout), float(idle_timeout))
    for fname, want in sums.items():
        target = dest / fname
        if target.is_file() and content_sha256(target) == want:
            say(f"{target}: already present, checksum OK")
            continue
        if target.exists():
            target.unlink()  # not what it should be: fetched again, never trusted
        url = base + fname
        say(f"downloading {url}")
        _fetch_verified(url, target, want, file_sums.get(fname), limits, progress)
        say(f"{target}: checksum OK")
    return dest


@dataclass(frozen=True)
class _Limits:
    deadline: float  # time.monotonic() by which everything is done
    timeout: float  # the overall deadline's length, for messages
    idle: float  # seconds without a byte (or with under MIN_BYTES_PER_IDLE) before giving up


def _fetch_verified(url: str, target: Path, want: str, file_sum: str | None, limits: _Limits,
                    progress: Progress | None) -> None:
    import pooch
    import requests

    # layerkit reports progress itself; pooch's logger is its own object, not logging's "pooch"
    pooch.get_logger().setLevel(logging.WARNING)
    fetcher = pooch.create(path=target.parent, base_url=url[:-len(target.name)],
                           registry={target.name: f"sha256:{file_sum}" if file_sum else None},
                           retry_if_failed=RETRIES)
    try:
        fetcher.fetch(target.name, downloader=_Downloader(limits, progress))
    except DataError:
        raise
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        reason = exc.response.reason if exc.response is not None else exc
        raise DataError(f"{url}: download failed: HTTP {code} {reason}") from None
    except requests.exceptions.RequestException as exc:
        raise DataError(f"{url}: download failed after {1 + RETRIES} tries: {_reason(exc)}") from None
    except ValueError as exc:  # pooch: the .gz file's hash is not the published one
        raise DataError(f"{url}: {str(exc).splitlines()[0]}; the file was not kept") from None
    except OSError as exc:
        raise DataError(f"{target}: cannot write the download ({exc.strerror or exc})") from None
    try:
        os.chmod(target, file_mode())  # pooch's temporary file is owner-only
        try:
            got = content_sha256(target)
        except DataError as exc:
            raise DataError(f"{url}: the download is not valid gzip data ({str(exc).split(': ', 1)[-1]}); "
                            f"the file was not kept") from None
        if got != want:
            raise DataError(f"{url}: SHA-256 mismatch (got {got}, expected {want}); the file was not kept")
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _urllib3_timeout() -> type[Exception]:
    """urllib3's read timeout (raised by a raw read of a requests response)."""
    from urllib3.exceptions import ReadTimeoutError
    return ReadTimeoutError


def _reason(exc: BaseException) -> str:
    text = str(exc)
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None)
    if reason is not None:
        text = str(reason)
    return text.split("\n")[0][:200]


class _Downloader:
    """A pooch downloader with an overall deadline, an idle timeout and a progress callback; http(s)
    and file:// URLs.

    It reads whatever the server has sent so far (``read1``). A silent server meets the socket's read
    timeout (the idle timeout, or the time left at the request when that is shorter); one that trickles bytes meets
    the low-speed rule (under 1 KiB in an idle-timeout span), checked between reads."""

    def __init__(self, limits: _Limits, progress: Progress | None) -> None:
        self.limits, self.progress = limits, progress

    def _left(self, url: str) -> float:
        left = self.limits.deadline - time.monotonic()
        if left <= 0:
            raise DataError(f"{url}: the download did not finish within {self.limits.timeout:g} s; try again "
                            f"later, raise --timeout, or use a mirror with --url-base")
        return left

    def _idle(self, url: str, what: str) -> DataError:
        self._left(url)  # past the deadline: that is the message
        return DataError(f"{url}: the server {what} {self.limits.idle:g} s; try again later, raise "
                         f"--idle-timeout, or use a mirror with --url-base")

    def __call__(self, url: str, output_file: str | Path | BinaryIO, pooch_instance: object = None) -> None:
        # pooch passes a path or an open file
        close = isinstance(output_file, (str, os.PathLike))
        out = open(output_file, "w+b") if isinstance(output_file, (str, os.PathLike)) else output_file
        try:
            if url.startswith("file://"):
                self._copy_local(url, out)
            else:
                self._http(url, out)
        finally:
            if close:
                out.close()

    def _copy_local(self, url: str, out: BinaryIO) -> None:
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        try:
            with open(path, "rb") as f:
                total = os.fstat(f.fileno()).st_size
                self._pump(url, lambda: f.read(CHUNK), out, total)
        except FileNotFoundError:
            raise DataError(f"{url}: download failed: no such file") from None
        except OSError as exc:
            raise DataError(f"{url}: download failed: {exc.strerror or exc}") from None

    def _http(self, url: str, out: BinaryIO) -> None:
        import requests

        wait = min(self.limits.idle, self._left(url))
        try:
            response = requests.get(url, stream=True, timeout=(wait, wait))
        except requests.exceptions.ReadTimeout:
            raise self._idle(url, "accepted the connection but sent no answer within") from None
        with response:
            if 400 <= response.status_code < 500:  # not worth retrying
                raise DataError(f"{url}: download failed: HTTP {response.status_code} {response.reason}")
            response.raise_for_status()
            total = int(response.headers.get("content-length") or 0) or None
            raw = response.raw

            def read() -> bytes:
                try:
                    return raw.read1(CHUNK, decode_content=True)
                except (TimeoutError, _urllib3_timeout()):
                    raise self._idle(url, "sent nothing for") from None

            self._pump(url, read, out, total)

    def _pump(self, url: str, read: Callable[[], bytes], out: BinaryIO, total: int | None) -> None:
        done = 0
        name = url.rsplit("/", 1)[-1]
        span_start, span_done = time.monotonic(), 0
        while True:
            self._left(url)
            chunk = read()
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - span_start >= self.limits.idle:
                if done - span_done < MIN_BYTES_PER_IDLE:
                    raise self._idle(url, f"sent {done - span_done} bytes in the last {now - span_start:.3g} s, "
                                          f"under {MIN_BYTES_PER_IDLE} bytes per")
                span_start, span_done = now, done
            if self.progress is not None:
                self.progress(name, done, total)
        if total and done < total:
            import requests  # a connection error: pooch tries again
            raise requests.exceptions.ConnectionError(f"the transfer stopped after {done:,} of {total:,} bytes")
