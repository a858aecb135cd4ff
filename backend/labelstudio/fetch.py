"""Turn the image URL of a Label Studio task into a local file the model can read, safely.

Label Studio sends ``/predict`` the raw stored URL (``data.image``), which can be:

- ``/data/local-files/?d=<path>``: Local Storage. With ``document_root`` (Label Studio's
  ``LOCAL_FILES_DOCUMENT_ROOT``) the file is read straight from disk, only inside that root (``..`` and
  symlinks that leave it are refused), and copied into the cache through the one descriptor that was
  checked; without it, it is downloaded from Label Studio.
- ``/data/upload/...`` and other ``/data/`` or ``/storage-data/`` paths: joined to ``label_studio_url``
  and downloaded with the token.
- ``http(s)://...``: the token is sent only when the scheme, host and port the HTTP client will connect
  to equal Label Studio's own; any other origin is fetched without credentials, and a URL that URL
  parsers read differently (backslashes) or that carries user info is refused.
- a plain path: read only under ``document_root``, resolved the way ``backend.labelstudio.tasks.resolve_local_url``
  resolves it for training, so that one URL names the same file in training and in prediction.
- anything else (``file:``, ``ftp:``, ``data:``, ``s3://`` ...): refused.

Why not the SDK helper ``label_studio_sdk._extensions.label_studio_tools.core.utils.io.get_local_path``,
which follows the same conventions? It reads the whole response into memory with no size cap and no
timeout, reads ``LOCAL_FILES_DOCUMENT_ROOT`` only once, when it is imported, and follows redirects with
requests' rules, which keep the ``Authorization`` header on an http->https or same-host redirect. This
module is a small ``requests`` client that keeps the SDK's conventions (``Token`` for a legacy token,
``Bearer`` for a JWT access token, token only to Label Studio's host, ``?d=`` under the document root)
and adds: a byte cap checked on ``Content-Length`` and while streaming, connect/read timeouts plus one
wall-clock deadline per image that response headers cannot outlast, redirects followed by hand with the
token dropped for good once a hop leaves Label Studio's origin, and a cache written atomically.

Downloads are cached in ``cache_dir`` under the SHA-256 of the absolute URL (never of the token), so a
task that is predicted again is not downloaded again. The cache is bounded (``cache_bytes``, least
recently used out) and its files are group-readable. With a personal access
token, pass the short-lived access token the SDK client holds and build a new fetcher when it is
refreshed; fetchers sharing a ``cache_dir`` share the cache.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import logging
import os
import re
import socket
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from backend.labelstudio.tasks import resolve_local_url
from backend.settings import Settings
from model.settings import image_limits

logger = logging.getLogger(__name__)

#: Paths that Label Studio serves itself; a URL starting with one is joined to ``label_studio_url``.
LABEL_STUDIO_PATHS = ("/data/", "/storage-data/")
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_BYTES = 64 * 1024
_CACHE_FILE_MODE = 0o640  # owner writes, group reads: the web process and the worker may be different users
#: Printable ASCII without spaces: anything else cannot go into an HTTP header as is.
_TOKEN_RE = re.compile(r"[!-~]+")
_SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,8}")

Origin = tuple[str, str, int]


class FetchError(ValueError):
    """An image URL that cannot or must not be fetched; the message says why (never the token)."""


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise FetchError(f"refusing {_shown(url)}: not a valid URL ({exc})") from None


def _shown(url: str) -> str:
    """The URL for a message, cut short: a ``data:`` URI can be megabytes long."""
    return repr(url if len(url) <= 200 else url[:200] + "...")


def _origin(url: str) -> Origin:
    """(scheme, host, port) that the HTTP client will connect to for ``url``, default port filled in.

    Decided on requests' own preparation of the URL, parsed as urllib3 parses it to open the connection:
    ``urlsplit`` reads ``http://evil:9999\\@ls:8080/`` as host ``ls`` while urllib3 ends the host at the
    backslash and connects to ``evil``. A URL on which the two parsers disagree, or that carries user
    info (``http://ls:8080@evil/``), is refused outright rather than guessed at.
    """
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
        parts = urllib3.util.parse_url(prepared.url or "")
    except (requests.RequestException, ValueError) as exc:  # urllib3's LocationParseError is a ValueError
        raise FetchError(f"refusing {_shown(url)}: not a valid URL ({type(exc).__name__})") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS:
        raise FetchError(
            f"refusing {_shown(url)}: only http and https URLs are fetched, not {scheme or 'a schemeless'} URLs"
        )
    if not parts.host:
        raise FetchError(f"refusing {_shown(url)}: no host")
    origin = (scheme, parts.host.strip("[]").lower(), parts.port or _DEFAULT_PORTS[scheme])
    if _naive_origin(url) != origin:
        raise FetchError(
            f"refusing {_shown(url)}: URL parsers disagree on its host (a backslash or a similar trick); "
            "write the URL plainly"
        )
    if parts.auth is not None or "@" in _split(url).netloc:
        raise FetchError(f"refusing {_shown(url)}: user info in an image URL (a name before '@') is not accepted")
    return origin


def _naive_origin(url: str) -> Origin | None:
    """The origin as ``urllib.parse`` reads ``url``, hosts IDNA-encoded as the client sends them; None if unreadable."""
    parts = _split(url)
    try:
        host = (parts.hostname or "").encode("idna").decode("ascii").lower()
        return parts.scheme.lower(), host, parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except (ValueError, UnicodeError):
        return None


def _touch(path: Path) -> bool:
    """Whether ``path`` is cached; a hit is marked as recently used (its modification time), for pruning."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError:
        pass  # another user's file in a shared cache: not marked, still a hit
    return path.is_file()


class _ConnectionBox:
    """The sockets a fetch is using and whether its deadline passed; shared with the deadline's timer thread.

    A socket is watched through a duplicate of its descriptor from the moment it is connected: a TLS
    handshake runs on a descriptor that Python's ``ssl`` has moved out of the socket urllib3 holds, so
    shutting down that socket would not stop a server trickling its handshake. ``shutdown`` on the
    duplicate stops the one connection behind both.
    """

    def __init__(self) -> None:
        self.connection: object = None  # a urllib3 HTTPConnection taken from the pool; its .sock is connected
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []  # duplicates of the sockets this fetch connected, ours to close
        self._lock = threading.Lock()  # cut and close never overlap: a closed descriptor's number may be reused

    def use(self, connection: object) -> None:
        """Note a pooled connection the fetch sends on; one noted after the deadline passed is cut at once."""
        self.connection = connection
        if self.expired.is_set():
            self.cut()

    def watch(self, sock: socket.socket) -> None:
        """Note a socket just connected, before any TLS handshake; one connected after the deadline is cut at once."""
        with self._lock:
            self._sockets.append(sock.dup())
        if self.expired.is_set():
            self.cut()

    def cut(self) -> None:
        """Mark the deadline passed and shut the sockets down: a read or handshake waiting on them fails at once."""
        self.expired.set()
        with self._lock:
            for sock in [getattr(self.connection, "sock", None), *self._sockets]:
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed

    def close(self) -> None:
        """Close the duplicates (the connections themselves stay urllib3's)."""
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


_current = threading.local()  # .box: the _ConnectionBox of the fetch running in this thread, if any


class _Announced:
    """A urllib3 connection that tells the running fetch about its socket once connected, and about itself as
    it sends (a connection reused from the pool connects no new socket)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        box = getattr(_current, "box", None)
        if box is not None:
            box.watch(sock)
        return sock

    def request(self, *args, **kwargs):
        box = getattr(_current, "box", None)
        if box is not None:
            box.use(self)
        return super().request(*args, **kwargs)


class _HTTPConnection(_Announced, HTTPConnection):
    pass


class _HTTPSConnection(_Announced, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter over connections that a deadline can cut (see ``_deadline``)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


@contextmanager
def _deadline(seconds: float) -> Iterator[threading.Event]:
    """One wall-clock limit for a whole download, TLS handshake and response headers included.

    requests' timeouts bound each socket read (a handshake, the connect timeout), so a server sending one
    header byte a second never trips them. At the deadline a timer shuts down the sockets the fetch is
    using; whatever read was waiting then fails at once. The event it yields says whether that happened.
    """
    box = _ConnectionBox()
    timer = threading.Timer(seconds, box.cut)
    timer.daemon = True
    _current.box = box
    timer.start()
    try:
        yield box.expired
    finally:
        timer.cancel()
        _current.box = None
        box.close()


class ImageFetcher:
    """Fetches task images into local files: the token only to Label Studio, a byte cap, timeouts, a cache.

    ``timeout`` bounds connecting and each read; ``deadline`` bounds a whole download including its
    redirects, so a server that trickles bytes cannot hold a worker for long.
    """

    def __init__(
        self,
        label_studio_url: str | None,
        token: str | None,
        cache_dir: Path,
        document_root: Path | None = None,
        max_bytes: int | None = None,
        timeout: float = 10.0,
        deadline: float = 30.0,
        cache_bytes: int | None = None,
    ) -> None:
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        try:
            self._origin = _origin(self.label_studio_url) if self.label_studio_url else None
        except FetchError as exc:
            raise FetchError(f"LABEL_STUDIO_URL must be an http(s) URL such as http://localhost:8080: {exc}") from None
        self._auth_header = self._authorization(token)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.document_root = Path(document_root) if document_root else None
        self.max_bytes = max_bytes if max_bytes is not None else image_limits().max_image_bytes
        self.timeout = timeout
        self.deadline = deadline
        self.cache_bytes = cache_bytes
        self._per_thread = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings, label_studio_url: str | None, token: str | None) -> ImageFetcher:
        """The fetcher of the backend's processes: the settings' limits and the shared cache under MODEL_DIR."""
        return cls(
            label_studio_url,
            token,
            settings.model_dir / "image-cache",
            settings.local_files_document_root,
            max_bytes=settings.max_image_bytes,
            timeout=settings.fetch_timeout,
            deadline=settings.fetch_deadline,
            cache_bytes=settings.image_cache_bytes,
        )

    @property
    def _session(self) -> requests.Session:
        """One session per thread (callers fetch from thread pools), keeping no cookies: each download
        stands alone and nothing carries from one origin to another."""
        session = getattr(self._per_thread, "session", None)
        if session is None:
            session = self._per_thread.session = requests.Session()
            for scheme in ("http://", "https://"):
                session.mount(scheme, _DeadlineAdapter())
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        return session

    @staticmethod
    def _authorization(token: str | None) -> str | None:
        """The Authorization header value: ``Bearer`` for a JWT (header.payload.signature), else ``Token``."""
        if not token:
            return None
        if not _TOKEN_RE.fullmatch(token):
            raise FetchError(
                "the Label Studio token contains spaces or non-printable characters; "
                "copy it again from Account & Settings"
            )
        return f"Bearer {token}" if token.count(".") == 2 else f"Token {token}"

    def fetch(self, url: object) -> Path:
        """A local file holding the image at ``url``; raises FetchError saying why when it cannot.

        The file stays in the cache while this fetcher lives, however small IMAGE_CACHE_BYTES is: a
        training run reads its images long after fetching them, and a pruned one would drop out of training.
        """
        path = self._fetch(url)
        _cache_sizes.pin(self, path)
        return path

    def _fetch(self, url: object) -> Path:
        if not isinstance(url, str) or not url.strip():
            raise FetchError(f"the task has no image URL (got {url!r:.200})")
        url = url.strip()
        parts = _split(url)
        if parts.scheme:
            if parts.scheme.lower() not in _DEFAULT_PORTS:
                raise FetchError(
                    f"refusing {_shown(url)}: the {parts.scheme}: scheme is not supported; use http(s) URLs, "
                    "Label Studio uploads or Local Storage (/data/local-files/?d=...)"
                )
            return self._download(url)
        if parts.netloc:
            raise FetchError(f"refusing {url!r}: a scheme-relative URL; give the full http(s) URL")
        if url.startswith("/data/local-files") and self.document_root is not None:
            return self._local(url)
        if url.startswith(LABEL_STUDIO_PATHS):
            if self.label_studio_url is None:
                raise FetchError(f"cannot download {url!r}: it is a Label Studio path and LABEL_STUDIO_URL is not set")
            return self._download(self.label_studio_url + url)
        if self.document_root is None:
            raise FetchError(
                f"refusing {url!r}: plain paths are read only under LOCAL_FILES_DOCUMENT_ROOT, which is not set"
            )
        return self._local(url)

    def _local(self, url: str) -> Path:
        """A copy, in the cache, of a file under the document root; ``..`` and symlinks leaving the root are refused.

        The file is opened once and checked through that open descriptor (its real path inside the root, a
        regular file, under the byte cap), and its bytes are copied from the same descriptor: a symlink
        swapped in after the check cannot redirect the read. The copy is keyed by the real path, size and
        modification time, so an unchanged file is copied once and a changed one again.
        """
        assert self.document_root is not None
        try:
            path = resolve_local_url(url, self.document_root)
        except (ValueError, OSError) as exc:
            raise FetchError(f"refusing {_shown(url)}: not a usable path ({exc})") from None
        if path is None:
            raise self._outside(url)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise FetchError(
                f"{_shown(url)}: no readable file {path} under LOCAL_FILES_DOCUMENT_ROOT ({self.document_root}) "
                f"({exc.strerror}); check that it is the same folder Label Studio serves"
            ) from None
        with os.fdopen(fd, "rb") as fh:
            real = Path(os.path.realpath(f"/proc/self/fd/{fd}"))
            if not real.is_relative_to(self.document_root.resolve()):
                raise self._outside(url)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FetchError(f"refusing {_shown(url)}: {path} is not a regular file")
            if st.st_size > self.max_bytes:
                raise FetchError(f"{_shown(url)}: {path} is {st.st_size} bytes, over the {self.max_bytes}-byte limit")
            target = self.cache_path(f"local:{real}:{st.st_size}:{st.st_mtime_ns}", suffix=real.suffix)
            if not _touch(target):
                self._write_cache(target, iter(lambda: fh.read(_CHUNK_BYTES), b""), url)
        return target

    def _outside(self, url: str) -> FetchError:
        return FetchError(
            f"refusing {_shown(url)}: it points outside LOCAL_FILES_DOCUMENT_ROOT ({self.document_root}) "
            "or is no file name (a NUL byte)"
        )

    def cache_path(self, url: str, suffix: str | None = None) -> Path:
        """Where the download of absolute ``url`` is cached: the URL's SHA-256 plus its file suffix."""
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        suffix = Path(_split(url).path).suffix if suffix is None else suffix
        return self.cache_dir / (digest + (suffix if _SUFFIX_RE.fullmatch(suffix) else ""))

    def _download(self, url: str) -> Path:
        target = self.cache_path(url)
        if _touch(target):
            logger.debug("cache hit for %s: %s", url, target)
            return target
        started = time.monotonic()
        with _deadline(self.deadline) as expired:
            try:
                return self._follow(url, target, started)
            except FetchError:
                if expired.is_set():
                    raise FetchError(
                        f"{_shown(url)}: the download took over {self.deadline} s (FETCH_DEADLINE)"
                    ) from None
                raise

    def _follow(self, url: str, target: Path, started: float) -> Path:
        """Follow redirects by hand: the token goes to Label Studio's origin only, never again once a hop left it."""
        current, credentials = url, True
        for _ in range(MAX_REDIRECTS + 1):
            credentials = _origin(current) == self._origin and credentials
            headers = {"Authorization": self._auth_header} if credentials and self._auth_header else {}
            try:
                response = self._session.get(
                    current, headers=headers, stream=True, allow_redirects=False, timeout=(self.timeout, self.timeout)
                )
            except requests.Timeout as exc:
                raise FetchError(f"{_shown(current)}: no answer within {self.timeout} s") from exc
            except (requests.RequestException, ValueError) as exc:  # urllib3's LocationParseError is a ValueError
                raise FetchError(f"{_shown(current)}: cannot connect ({type(exc).__name__})") from exc
            with response:
                if response.status_code in _REDIRECT_STATUSES and response.headers.get("Location"):
                    current = urljoin(current, response.headers["Location"])
                    logger.debug("%s redirects to %s", url, current)
                    continue
                if response.status_code != 200:
                    raise FetchError(self._status_message(current, response.status_code, credentials))
                self._save(response, current, target, started)
            logger.debug("downloaded %s to %s", url, target)
            return target
        raise FetchError(f"{_shown(url)}: more than {MAX_REDIRECTS} redirects")

    def _status_message(self, url: str, status: int, credentials: bool) -> str:
        message = f"{url!r}: HTTP {status}"
        if status in (401, 403) and credentials:
            message += (
                " from Label Studio: check LABEL_STUDIO_API_KEY "
                "(a legacy token needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN)"
            )
        elif status == 404 and credentials and "/data/local-files" in url:
            message += ": the project needs a Local Storage that contains this file"
        return message

    def _save(self, response: requests.Response, url: str, target: Path, started: float) -> None:
        """Stream the body into the cache, enforcing the byte cap and the deadline."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"{url!r}: {declared} bytes declared, over the {self.max_bytes}-byte limit")

        def body() -> Iterator[bytes]:
            # read1 returns whatever has arrived (requests' iter_content waits for a whole chunk), so
            # the deadline is checked even while a server trickles bytes; it also caps decoded sizes.
            while chunk := response.raw.read1(_CHUNK_BYTES, decode_content=True):
                if time.monotonic() - started > self.deadline:
                    raise FetchError(f"{url!r}: the download took over {self.deadline} s")
                yield chunk
            if time.monotonic() - started > self.deadline:  # a body cut short by the deadline's timer ends quietly
                raise FetchError(f"{url!r}: the download took over {self.deadline} s")

        try:
            self._write_cache(target, body(), url)
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(
                f"{url!r}: the download broke off or stalled for over {self.timeout} s ({type(exc).__name__})"
            ) from exc

    def _write_cache(self, target: Path, chunks: Iterable[bytes], url: str) -> None:
        """Write ``chunks`` to ``target`` atomically (a temporary file renamed into place), under the byte cap.

        Files are readable by the group, so that a web process and a worker running as different users of
        one group share the cache. A full disk is the task's FetchError, not the request's crash. The
        cache is then kept under ``cache_bytes``, least recently used out.
        """
        tmp_name = None
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-")
            os.fchmod(fd, _CACHE_FILE_MODE)
            received = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    received += len(chunk)
                    if received > self.max_bytes:
                        raise FetchError(f"{url!r}: more than {self.max_bytes} bytes, over the limit")
                    out.write(chunk)
            os.replace(tmp_name, target)
        except OSError as exc:
            raise FetchError(
                f"{url!r}: cannot write to the image cache {self.cache_dir} ({exc.strerror or exc}); "
                "free disk space there or lower IMAGE_CACHE_BYTES"
            ) from exc
        finally:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
        _cache_sizes.add(self, target, received)


class _CacheSizes:
    """The image caches' sizes, kept per folder and process, so pruning scans a folder only when it is over.

    A cache folder is scanned once per process to learn its size; every write adds to it; when the total
    passes the bound, the least recently used files (oldest modification time: a hit touches its file)
    are removed until the folder holds 90 % of the bound. Several processes sharing a folder each prune
    it; a file another removed first is skipped. Files a live fetcher of this process handed out are
    pinned: never pruned while it lives (other processes do not see these pins).
    """

    def __init__(self) -> None:
        self._sizes: dict[Path, int] = {}
        self._pins: weakref.WeakKeyDictionary[ImageFetcher, set[Path]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def pin(self, fetcher: ImageFetcher, path: Path) -> None:
        with self._lock:
            self._pins.setdefault(fetcher, set()).add(path)

    def add(self, fetcher: ImageFetcher, written: Path, size: int) -> None:
        """Count ``size`` new bytes at ``written`` (pinned for ``fetcher``); prune if over the fetcher's bound."""
        folder, bound = fetcher.cache_dir, fetcher.cache_bytes
        with self._lock:
            self._pins.setdefault(fetcher, set()).add(written)
            if bound is None:
                return
            if folder not in self._sizes:
                self._sizes[folder] = sum(size for _, size, _ in _cache_files(folder))
            else:
                self._sizes[folder] += size
            if self._sizes[folder] > bound:
                pinned = set().union(*self._pins.values())
                self._sizes[folder] = _prune(folder, int(bound * 0.9), pinned)


def _cache_files(folder: Path) -> list[tuple[float, int, Path]]:
    """(modification time, size, path) of the cached files (not the temporary ``.part-`` ones)."""
    found = []
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append((st.st_mtime, st.st_size, Path(entry.path)))
    return found


def _prune(folder: Path, keep: int, pinned: set[Path]) -> int:
    """Remove the least recently used files not ``pinned`` until ``folder`` holds at most ``keep`` bytes.

    Returns the size left, which stays over ``keep`` while pinned files alone exceed it, or files this
    process may not remove (another user's, in a folder with the sticky bit): pruning must never fail the
    fetch that triggered it, whose image is already saved."""
    files = sorted(_cache_files(folder))
    total = sum(size for _, size, _ in files)
    removed = 0
    for _, size, path in files:
        if total <= keep:
            break
        if path in pinned:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning(
                "image cache %s: cannot remove %s (%s); give both processes' users write access",
                folder,
                path.name,
                exc.strerror or exc,
            )
            continue
        total -= size
        removed += 1
    logger.info("image cache %s: removed the %d least recently used file(s); %d bytes remain", folder, removed, total)
    return total


_cache_sizes = _CacheSizes()
