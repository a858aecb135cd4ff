"""Turn the image URL of a Label Studio task into a local file the model can read, safely.

Label Studio sends ``/predict`` the raw stored URL (``data.image``), which can be:

- ``/data/local-files/?d=<path>``: Local Storage. With ``document_root`` (Label Studio's
  ``LOCAL_FILES_DOCUMENT_ROOT``) the file is read straight from disk, only inside that root (``..`` and
  symlinks that leave it are refused); without it, it is downloaded from Label Studio.
- ``/data/upload/...`` and other ``/data/`` or ``/storage-data/`` paths: joined to ``label_studio_url``
  and downloaded with the token.
- ``http(s)://...``: the token is sent only when scheme, host and port equal Label Studio's own; any
  other origin is fetched without credentials.
- a plain path: read only under ``document_root``, resolved the way ``model.data.resolve_local_url``
  resolves it for training, so that one URL names the same file in training and in prediction.
- anything else (``file:``, ``ftp:``, ``data:``, ``s3://`` ...): refused.

Why not the SDK helper ``label_studio_sdk._extensions.label_studio_tools.core.utils.io.get_local_path``,
which follows the same conventions? It reads the whole response into memory with no size cap and no
timeout, reads ``LOCAL_FILES_DOCUMENT_ROOT`` only once, when it is imported, and follows redirects with
requests' rules, which keep the ``Authorization`` header on an http->https or same-host redirect. This
module is a small ``requests`` client that keeps the SDK's conventions (``Token`` for a legacy token,
``Bearer`` for a JWT access token, token only to Label Studio's host, ``?d=`` under the document root)
and adds: a byte cap checked on ``Content-Length`` and while streaming, connect/read timeouts plus an
overall deadline, redirects followed by hand with the token dropped for good once a hop leaves Label
Studio's origin, and a cache written atomically.

Downloads are cached in ``cache_dir`` under the SHA-256 of the absolute URL (never of the token), so a
task that is predicted again is not downloaded again. The cache is not pruned. With a personal access
token, pass the short-lived access token the SDK client holds and build a new fetcher when it is
refreshed; fetchers sharing a ``cache_dir`` share the cache.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import urllib3

from model.data import resolve_local_url

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 30 * 1024 * 1024
#: Paths that Label Studio serves itself; a URL starting with one is joined to ``label_studio_url``.
LABEL_STUDIO_PATHS = ("/data/", "/storage-data/")
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_BYTES = 64 * 1024
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
    """(scheme, host, port) of an http(s) URL, with the default port filled in."""
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise FetchError(f"refusing {url!r}: only http and https URLs are fetched, not {scheme or 'a schemeless'} URLs")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise FetchError(f"refusing {url!r}: invalid port ({exc})") from None
    if not parts.hostname:
        raise FetchError(f"refusing {url!r}: no host")
    return scheme, parts.hostname.lower(), port


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
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = 10.0,
        deadline: float = 60.0,
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
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.deadline = deadline
        self._per_thread = threading.local()

    @property
    def _session(self) -> requests.Session:
        """One session per thread (callers fetch from thread pools), keeping no cookies: each download
        stands alone and nothing carries from one origin to another."""
        session = getattr(self._per_thread, "session", None)
        if session is None:
            session = self._per_thread.session = requests.Session()
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        return session

    @staticmethod
    def _authorization(token: str | None) -> str | None:
        """The Authorization header value: ``Bearer`` for a JWT (header.payload.signature), else ``Token``."""
        if not token:
            return None
        if not _TOKEN_RE.fullmatch(token):
            raise FetchError("the Label Studio token contains spaces or non-printable characters; copy it again from Account & Settings")
        return f"Bearer {token}" if token.count(".") == 2 else f"Token {token}"

    def fetch(self, url: str) -> Path:
        """A local file holding the image at ``url``; raises FetchError saying why when it cannot."""
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
        """A file under the document root; ``..`` and symlinks that leave the root are refused."""
        assert self.document_root is not None
        try:
            path = resolve_local_url(url, self.document_root)
        except (ValueError, OSError) as exc:
            raise FetchError(f"refusing {url!r}: not a usable path ({exc})") from None
        if path is None:
            raise FetchError(f"refusing {url!r}: it points outside LOCAL_FILES_DOCUMENT_ROOT ({self.document_root})")
        if not path.is_file():
            raise FetchError(
                f"{url!r}: no file {path} under LOCAL_FILES_DOCUMENT_ROOT ({self.document_root}); "
                "check that it is the same folder Label Studio serves"
            )
        size = path.stat().st_size
        if size > self.max_bytes:
            raise FetchError(f"{url!r}: {path} is {size} bytes, over the {self.max_bytes}-byte limit")
        return path

    def cache_path(self, url: str) -> Path:
        """Where the download of absolute ``url`` is cached: the URL's SHA-256 plus its file suffix."""
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        suffix = Path(_split(url).path).suffix
        return self.cache_dir / (digest + (suffix if _SUFFIX_RE.fullmatch(suffix) else ""))

    def _download(self, url: str) -> Path:
        target = self.cache_path(url)
        if target.is_file():
            logger.debug("cache hit for %s: %s", url, target)
            return target
        started = time.monotonic()
        current, credentials = url, True
        for _ in range(MAX_REDIRECTS + 1):
            if time.monotonic() - started > self.deadline:
                raise FetchError(f"{url!r}: the download took over {self.deadline} s")
            # The token goes to Label Studio's origin only, and once a redirect leaves it, never again.
            credentials = _origin(current) == self._origin and credentials
            headers = {"Authorization": self._auth_header} if credentials and self._auth_header else {}
            try:
                response = self._session.get(
                    current, headers=headers, stream=True, allow_redirects=False, timeout=(self.timeout, self.timeout)
                )
            except requests.Timeout as exc:
                raise FetchError(f"{current!r}: no answer within {self.timeout} s") from exc
            except requests.RequestException as exc:
                raise FetchError(f"{current!r}: cannot connect ({type(exc).__name__})") from exc
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
        raise FetchError(f"{url!r}: more than {MAX_REDIRECTS} redirects")

    def _status_message(self, url: str, status: int, credentials: bool) -> str:
        message = f"{url!r}: HTTP {status}"
        if status in (401, 403) and credentials:
            message += " from Label Studio: check LABEL_STUDIO_API_KEY (a legacy token needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN)"
        elif status == 404 and credentials and "/data/local-files" in url:
            message += ": the project needs a Local Storage that contains this file"
        return message

    def _save(self, response: requests.Response, url: str, target: Path, started: float) -> None:
        """Stream the body into a temporary file, enforcing the byte cap and deadline, then rename it."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"{url!r}: {declared} bytes declared, over the {self.max_bytes}-byte limit")
        fd, tmp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-")
        try:
            received = 0
            with os.fdopen(fd, "wb") as out:
                # read1 returns whatever has arrived (requests' iter_content waits for a whole chunk), so
                # the deadline is checked even while a server trickles bytes; it also caps decoded sizes.
                while chunk := response.raw.read1(_CHUNK_BYTES, decode_content=True):
                    received += len(chunk)
                    if received > self.max_bytes:
                        raise FetchError(f"{url!r}: more than {self.max_bytes} bytes, over the limit")
                    if time.monotonic() - started > self.deadline:
                        raise FetchError(f"{url!r}: the download took over {self.deadline} s")
                    out.write(chunk)
            os.replace(tmp_name, target)
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"{url!r}: the download broke off or stalled for over {self.timeout} s ({type(exc).__name__})") from exc
        finally:
            Path(tmp_name).unlink(missing_ok=True)
