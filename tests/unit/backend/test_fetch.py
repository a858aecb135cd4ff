"""Tests for backend.labelstudio.fetch: the token reaches Label Studio's origin only, caps and timeouts hold, local
paths stay inside the document root, and downloads are cached.

Two real HTTP servers on 127.0.0.1 (different ports, hence different origins) record the
Authorization header of every request they get.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from backend.labelstudio.fetch import FetchError, ImageFetcher

TOKEN = "0123456789abcdef0123456789abcdef01234567"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoiYWNjZXNzIn0.c2lnbmF0dXJl"
BODY = b"\xff\xd8\xff\xe0 not really a jpeg, but bytes to fetch"


class _Handler(BaseHTTPRequestHandler):
    """Routes: /img/* and /data/* (BODY), /big (declared too large), /stream-big (too large, no length),
    /slow (answers late), /drip (a byte at a time), /trickle-headers (headers a byte at a time),
    /redirect?to=URL (302), /loop (302 to itself); "missing" or anything else 404."""

    server: _Server

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
        try:
            if "missing" in path:
                self._send(404, b"not found")
            elif path.startswith("/img/") or path.startswith("/data/"):
                self._send(200, BODY)
            elif path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(10_000_000))
                self.end_headers()
                self.wfile.write(b"x" * 1000)
            elif path == "/stream-big":
                self.send_response(200)  # no Content-Length: the body ends when the connection closes
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"x" * 1024)
            elif path == "/slow":
                self.server.stop.wait(3)
                self._send(200, BODY)
            elif path == "/drip":
                self.send_response(200)
                self.end_headers()
                for _ in range(30):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    if self.server.stop.wait(0.1):
                        break
            elif path == "/trickle-headers":  # one header byte at a time: read timeouts never trip
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(200):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    if self.server.stop.wait(0.1):
                        break
            elif path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(404, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def auth_for(self, path_prefix: str) -> list[str | None]:
        return [auth for path, auth in self.seen if path.startswith(path_prefix)]


@pytest.fixture
def servers():
    """(Label Studio stand-in, another origin): both on 127.0.0.1, on different ports."""
    pair = (_Server(), _Server())
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True) for s in pair]
    for thread in threads:
        thread.start()
    yield pair
    for server in pair:
        server.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def ls(servers):
    return servers[0]


@pytest.fixture
def other(servers):
    return servers[1]


def _fetcher(tmp_path: Path, ls_url: str | None, token: str | None = TOKEN, **kw) -> ImageFetcher:
    return ImageFetcher(ls_url, token, cache_dir=tmp_path / "cache", **kw)


# --- credentials go to Label Studio's origin only ------------------------------------------------


def test_upload_path_is_downloaded_from_label_studio_with_the_legacy_token(tmp_path, ls):
    path = _fetcher(tmp_path, ls.url).fetch("/data/upload/3/a.jpg")
    assert path.read_bytes() == BODY
    assert ls.seen == [("/data/upload/3/a.jpg", f"Token {TOKEN}")]


def test_jwt_access_token_is_sent_as_bearer(tmp_path, ls):
    _fetcher(tmp_path, ls.url, token=JWT).fetch("/data/upload/3/a.jpg")
    assert ls.auth_for("/data/upload/3/a.jpg") == [f"Bearer {JWT}"]


def test_label_studio_url_with_a_path_prefix_keeps_it(tmp_path, ls):
    _fetcher(tmp_path, ls.url + "/data/sub/").fetch("/data/upload/3/a.jpg")
    assert [p for p, _ in ls.seen] == ["/data/sub/data/upload/3/a.jpg"]


def test_absolute_url_on_label_studio_origin_gets_the_token(tmp_path, ls):
    _fetcher(tmp_path, ls.url + "/").fetch(f"{ls.url}/img/b.png")
    assert ls.auth_for("/img/b.png") == [f"Token {TOKEN}"]


def test_other_origin_gets_no_token(tmp_path, ls, other):
    path = _fetcher(tmp_path, ls.url).fetch(f"{other.url}/img/c.jpg")
    assert path.read_bytes() == BODY
    assert other.seen == [("/img/c.jpg", None)]
    assert ls.seen == []


def test_same_host_other_port_is_another_origin(tmp_path, ls, other):
    # Both servers are 127.0.0.1; only the port differs.
    assert urlsplit(ls.url).hostname == urlsplit(other.url).hostname
    _fetcher(tmp_path, ls.url).fetch(f"{other.url}/img/d.jpg")
    assert other.auth_for("/img/d.jpg") == [None]


def test_cross_origin_redirect_does_not_carry_the_token(tmp_path, ls, other):
    target = f"{other.url}/img/e.jpg"
    path = _fetcher(tmp_path, ls.url).fetch(f"{ls.url}/redirect?to={target}")
    assert path.read_bytes() == BODY
    assert ls.auth_for("/redirect") == [f"Token {TOKEN}"]
    assert other.seen == [("/img/e.jpg", None)]


def test_redirect_back_to_label_studio_after_leaving_it_stays_without_token(tmp_path, ls, other):
    # LS -> other origin -> LS: once the chain left Label Studio, the token is not picked up again.
    back = f"{ls.url}/img/f.jpg"
    _fetcher(tmp_path, ls.url).fetch(f"{ls.url}/redirect?to={other.url}/redirect?to={back}")
    assert ls.auth_for("/img/f.jpg") == [None]
    assert other.auth_for("/redirect") == [None]


def test_same_origin_redirect_keeps_the_token(tmp_path, ls):
    _fetcher(tmp_path, ls.url).fetch(f"{ls.url}/redirect?to=/img/g.jpg")
    assert ls.auth_for("/img/g.jpg") == [f"Token {TOKEN}"]


def test_redirect_to_another_scheme_is_refused(tmp_path, ls):
    with pytest.raises(FetchError, match="only http and https"):
        _fetcher(tmp_path, ls.url).fetch(f"{ls.url}/redirect?to=file:///etc/passwd")


def test_redirect_loop_is_cut_short(tmp_path, other):
    with pytest.raises(FetchError, match="more than 5 redirects"):
        _fetcher(tmp_path, None).fetch(f"{other.url}/loop")
    assert len(other.seen) == 6


def test_no_token_means_no_authorization_header(tmp_path, ls):
    _fetcher(tmp_path, ls.url, token=None).fetch("/data/upload/3/a.jpg")
    assert ls.auth_for("/data/upload") == [None]


def test_relative_label_studio_path_without_label_studio_url_is_refused(tmp_path):
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL is not set"):
        _fetcher(tmp_path, None).fetch("/data/upload/3/a.jpg")


def test_token_with_whitespace_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(FetchError, match="non-printable") as info:
        _fetcher(tmp_path, "http://127.0.0.1:1", token="secret\nInjected: header")
    assert "secret" not in str(info.value)


def test_label_studio_url_without_scheme_is_refused_at_construction(tmp_path):
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL must be an http"):
        _fetcher(tmp_path, "localhost:8080")


def test_parallel_fetches_from_one_fetcher(tmp_path, ls, other):
    fetcher = _fetcher(tmp_path, ls.url)
    urls = [f"/data/upload/1/{i}.jpg" for i in range(8)] + [f"{other.url}/img/{i}.jpg" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(fetcher.fetch, urls))
    assert len(set(paths)) == 16 and all(p.read_bytes() == BODY for p in paths)
    assert set(ls.auth_for("/data/upload/1/")) == {f"Token {TOKEN}"}
    assert set(other.auth_for("/img/")) == {None}


# --- bad responses: size, time, status --------------------------------------------------------------


def test_declared_size_over_the_cap_is_refused(tmp_path, other):
    fetcher = _fetcher(tmp_path, None, max_bytes=1000)
    with pytest.raises(FetchError, match="10000000 bytes declared"):
        fetcher.fetch(f"{other.url}/big")
    assert list(fetcher.cache_dir.iterdir()) == []


def test_streamed_size_over_the_cap_is_refused_and_leaves_no_partial_file(tmp_path, other):
    fetcher = _fetcher(tmp_path, None, max_bytes=10_000)
    with pytest.raises(FetchError, match="more than 10000 bytes"):
        fetcher.fetch(f"{other.url}/stream-big")
    assert list(fetcher.cache_dir.iterdir()) == []


def test_body_at_the_cap_is_accepted(tmp_path, other):
    assert _fetcher(tmp_path, None, max_bytes=len(BODY)).fetch(f"{other.url}/img/h.jpg").read_bytes() == BODY


def test_slow_server_times_out(tmp_path, other):
    started = time.monotonic()
    with pytest.raises(FetchError, match="no answer within 0.3 s"):
        _fetcher(tmp_path, None, timeout=0.3).fetch(f"{other.url}/slow")
    assert time.monotonic() - started < 2


def test_trickling_server_hits_the_deadline(tmp_path, other):
    # Each byte arrives well within the read timeout; the overall deadline still stops it.
    started = time.monotonic()
    with pytest.raises(FetchError, match="took over 0.5 s"):
        _fetcher(tmp_path, None, timeout=1.0, deadline=0.5).fetch(f"{other.url}/drip")
    assert time.monotonic() - started < 2


def test_404_names_the_status(tmp_path, other):
    with pytest.raises(FetchError, match="HTTP 404"):
        _fetcher(tmp_path, None).fetch(f"{other.url}/missing.jpg")


def test_connection_refused_is_a_fetch_error(tmp_path, other):
    url = other.url
    other.shutdown()
    other.server_close()
    with pytest.raises(FetchError, match="cannot connect"):
        _fetcher(tmp_path, None, timeout=1.0).fetch(f"{url}/img/x.jpg")


def test_token_never_reaches_logs_or_messages_on_an_error_path(tmp_path, ls, caplog):
    caplog.set_level(logging.DEBUG)
    fetcher = _fetcher(tmp_path, ls.url)
    with pytest.raises(FetchError, match="HTTP 404") as info:
        fetcher.fetch("/data/upload/3/missing.jpg")
    assert ls.auth_for("/data/upload/3/missing.jpg") == [f"Token {TOKEN}"]  # the token was used...
    assert TOKEN not in str(info.value)  # ...and appears nowhere else
    assert caplog.records and TOKEN not in caplog.text
    assert all(TOKEN not in str(r.args) for r in caplog.records)


# --- refused schemes and local paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://x/1",
        "s3://bucket/a.jpg",
    ],
)
def test_other_schemes_are_refused(tmp_path, url):
    with pytest.raises(FetchError, match="scheme is not supported"):
        _fetcher(tmp_path, "http://127.0.0.1:1", document_root=tmp_path).fetch(url)


def test_refusal_message_of_a_huge_data_uri_stays_short(tmp_path):
    with pytest.raises(FetchError) as info:
        _fetcher(tmp_path, None).fetch("data:image/png;base64," + "A" * 1_000_000)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("url", ["http://[::1/a.jpg", "http://127.0.0.1:99999/a.jpg", "", None])
def test_malformed_url_is_a_fetch_error(tmp_path, url):
    with pytest.raises(FetchError):
        _fetcher(tmp_path, None).fetch(url)


def test_scheme_relative_url_is_refused(tmp_path, other):
    with pytest.raises(FetchError, match="scheme-relative"):
        _fetcher(tmp_path, None).fetch(f"//127.0.0.1:{urlsplit(other.url).port}/img/a.jpg")
    assert other.seen == []


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "good.jpg").write_bytes(BODY)
    return root


def test_local_file_under_the_root_is_read_from_disk(tmp_path, root, ls):
    path = _fetcher(tmp_path, ls.url, document_root=root).fetch("/data/local-files/?d=imgs/good.jpg")
    assert path.parent == tmp_path / "cache"  # a copy made through one open descriptor (issue 11 item 15)
    assert path.read_bytes() == BODY
    assert ls.seen == []


def test_local_file_without_root_is_downloaded_from_label_studio_with_token(tmp_path, ls):
    path = _fetcher(tmp_path, ls.url).fetch("/data/local-files/?d=imgs/good.jpg")
    assert path.read_bytes() == BODY
    assert ls.seen == [("/data/local-files/?d=imgs/good.jpg", f"Token {TOKEN}")]


@pytest.mark.parametrize("d", ["../../etc/passwd", "imgs/../../outside.jpg", "imgs/%2e%2e/%2e%2e/outside.jpg"])
def test_dot_dot_escape_is_refused(tmp_path, root, ls, d):
    (tmp_path / "outside.jpg").write_bytes(BODY)
    with pytest.raises(FetchError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        _fetcher(tmp_path, ls.url, document_root=root).fetch(f"/data/local-files/?d={d}")
    assert ls.seen == []


def test_a_leading_slash_dot_dot_stays_at_the_root_as_in_label_studio(tmp_path, root):
    """normpath('/../x') is '/x': Label Studio serves <root>/x, never the file beside the root."""
    (tmp_path / "outside.jpg").write_bytes(b"beside the root")
    fetcher = _fetcher(tmp_path, None, document_root=root)
    with pytest.raises(FetchError, match="no readable file"):
        fetcher.fetch("/data/local-files/?d=/../outside.jpg")
    (root / "outside.jpg").write_bytes(BODY)
    assert fetcher.fetch("/data/local-files/?d=/../outside.jpg").read_bytes() == BODY


def test_symlink_escaping_the_root_is_refused(tmp_path, root):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(BODY)
    (root / "imgs" / "link.jpg").symlink_to(secret)
    (root / "escape").symlink_to(tmp_path)
    fetcher = _fetcher(tmp_path, None, document_root=root)
    for url in ("/data/local-files/?d=imgs/link.jpg", "/data/local-files/?d=escape/secret.jpg"):
        with pytest.raises(FetchError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
            fetcher.fetch(url)


def test_symlink_inside_the_root_is_followed(tmp_path, root):
    (root / "imgs" / "alias.jpg").symlink_to(root / "imgs" / "good.jpg")
    fetcher = _fetcher(tmp_path, None, document_root=root)
    path = fetcher.fetch("/data/local-files/?d=imgs/alias.jpg")
    assert path.read_bytes() == BODY and path == fetcher.fetch("/data/local-files/?d=imgs/good.jpg")  # one copy


def test_missing_local_file_is_a_clear_error(tmp_path, root):
    with pytest.raises(FetchError, match="no readable file .* under LOCAL_FILES_DOCUMENT_ROOT"):
        _fetcher(tmp_path, None, document_root=root).fetch("/data/local-files/?d=imgs/none.jpg")


def test_local_file_over_the_cap_is_refused(tmp_path, root):
    with pytest.raises(FetchError, match="over the 10-byte limit"):
        _fetcher(tmp_path, None, document_root=root, max_bytes=10).fetch("/data/local-files/?d=imgs/good.jpg")


def test_plain_path_is_refused_without_a_root(tmp_path, root):
    with pytest.raises(FetchError, match="LOCAL_FILES_DOCUMENT_ROOT, which is not set"):
        _fetcher(tmp_path, None).fetch(str(root / "imgs" / "good.jpg"))


def test_plain_path_is_read_under_the_root_and_cannot_leave_it(tmp_path, root):
    fetcher = _fetcher(tmp_path, None, document_root=root)
    assert fetcher.fetch("imgs/good.jpg").read_bytes() == BODY
    with pytest.raises(FetchError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.fetch("../outside.jpg")


# --- cache ------------------------------------------------------------------------------------------------


def test_cache_hit_does_not_request_again(tmp_path, ls):
    first = _fetcher(tmp_path, ls.url).fetch("/data/upload/3/a.jpg")
    again = _fetcher(tmp_path, ls.url).fetch("/data/upload/3/a.jpg")  # a new fetcher, the same cache_dir
    assert again == first and again.read_bytes() == BODY
    assert len(ls.seen) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind


def test_cache_key_depends_on_url_not_token(tmp_path, ls):
    with_token = _fetcher(tmp_path, ls.url).fetch("/data/upload/3/a.jpg")
    assert TOKEN not in str(with_token)
    assert _fetcher(tmp_path, ls.url, token=JWT).fetch("/data/upload/3/a.jpg") == with_token
    assert _fetcher(tmp_path, ls.url).fetch("/data/upload/3/other.jpg") != with_token
    assert len(ls.seen) == 2


# --- parser differentials: the token goes where the client really connects (issue 11 item 1) -------


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    "trick",
    [
        "http://127.0.0.1:{other}\\@127.0.0.1:{ls}/img/t.jpg",  # urllib3 connects to {other}, urlsplit says {ls}
        "http://127.0.0.1:{other}\\\\@127.0.0.1:{ls}/img/t.jpg",  # doubled backslashes
        "http://127.0.0.1:{other}\\/img/t.jpg",  # a backslash before the path
        "http://127.0.0.1:{ls}@127.0.0.1:{other}/img/t.jpg",  # user info that looks like Label Studio
        "http://user:pw@127.0.0.1:{ls}/img/t.jpg",  # user info on Label Studio itself
    ],
    ids=["backslash", "double-backslash", "backslash-path", "userinfo-lookalike", "userinfo"],
)
def test_ambiguous_urls_are_refused_before_any_request(tmp_path, ls, other, trick):
    """Before the fix, the first one passed the origin check as Label Studio and sent the token to {other}."""
    url = trick.format(ls=_port(ls), other=_port(other))
    with pytest.raises(FetchError, match="refusing"):
        _fetcher(tmp_path, ls.url).fetch(url)
    assert other.seen == [] and ls.seen == []


@pytest.mark.parametrize(
    "trick",
    ["{other_url}/img/h.jpg#@127.0.0.1:{ls}/", "{other_url}/img/h.jpg?@127.0.0.1:{ls}/"],
    ids=["fragment-at", "query-at"],
)
def test_an_at_sign_after_the_host_does_not_move_the_origin(tmp_path, ls, other, trick):
    _fetcher(tmp_path, ls.url).fetch(trick.format(other_url=other.url, ls=_port(ls)))
    assert [auth for _, auth in other.seen] == [None] and ls.seen == []


def test_an_upper_case_scheme_and_host_are_still_label_studio(tmp_path, ls):
    _fetcher(tmp_path, ls.url).fetch(ls.url.replace("http://", "HTTP://") + "/img/u.jpg")
    assert ls.auth_for("/img/u.jpg") == [f"Token {TOKEN}"]


@pytest.mark.parametrize(
    "a,b,same",
    [
        ("http://ls", "http://ls:80/x", True),
        ("https://ls/", "https://LS:443/x", True),
        ("http://ls", "https://ls/x", False),
        ("http://ls", "http://ls./x", False),
        ("http://bücher.example", "http://xn--bcher-kva.example/x", True),
        ("http://[::1]:8080", "http://[::1]:8080/x", True),
        ("http://ls:8080", "http://ls:8081/x", False),
    ],
)
def test_origins_compare_as_the_client_connects(a, b, same):
    from backend.labelstudio.fetch import _origin

    assert (_origin(a) == _origin(b)) is same


# --- one wall-clock deadline per image, headers included (issue 11 item 2) ----------------------


def test_a_server_trickling_its_headers_is_cut_at_the_deadline(tmp_path, other):
    """Before the fix, a header byte every 0.1 s kept the 1 s-deadline fetch alive for the whole 20 s."""
    started = time.monotonic()
    with pytest.raises(FetchError, match="took over 1.0 s"):
        _fetcher(tmp_path, None, deadline=1.0, timeout=5.0).fetch(f"{other.url}/trickle-headers")
    assert time.monotonic() - started < 3.0


def test_the_deadline_leaves_a_later_fetch_on_the_same_thread_working(tmp_path, other):
    fetcher = _fetcher(tmp_path, None, deadline=1.0, timeout=5.0)
    with pytest.raises(FetchError):
        fetcher.fetch(f"{other.url}/trickle-headers")
    assert fetcher.fetch(f"{other.url}/img/after.jpg").read_bytes() == BODY


def test_a_deadline_passing_during_a_slow_connect_still_cuts_the_headers(tmp_path, other, monkeypatch):
    """The timer fired while the socket did not exist yet, so it cut nothing and the trickle ran its 20 s."""
    from urllib3.connection import HTTPConnection

    connect = HTTPConnection.connect

    def slow_connect(self):  # type: ignore[no-untyped-def]
        time.sleep(1.0)  # the deadline passes here
        connect(self)

    monkeypatch.setattr(HTTPConnection, "connect", slow_connect)
    started = time.monotonic()
    with pytest.raises(FetchError, match="took over 0.5 s"):
        _fetcher(tmp_path, None, deadline=0.5, timeout=5.0).fetch(f"{other.url}/trickle-headers")
    assert time.monotonic() - started < 3.0


@pytest.fixture
def trickling_tls():
    """An https origin whose TLS handshake never ends: a record header promising 16 KiB, then a byte every 0.1 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                conn.recv(4096)  # the client's hello
                conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB follows ...
                while not stop.wait(0.1):
                    conn.sendall(b"\x02")  # ... one byte at a time
            except OSError:
                pass  # the client gave up, as it should

    threading.Thread(target=serve, daemon=True).start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_server_trickling_its_tls_handshake_is_cut_at_the_deadline(tmp_path, trickling_tls):
    """The timer shut down a socket whose descriptor ssl had taken over: the handshake ran on to the 5 s timeout."""
    started = time.monotonic()
    with pytest.raises(FetchError, match="took over 1.0 s"):
        _fetcher(tmp_path, None, deadline=1.0, timeout=5.0).fetch(f"{trickling_tls}/x.jpg")
    assert time.monotonic() - started < 2.5


# --- local files: exactly the file named, read through one descriptor (issue 11 item 15) ----------


def test_a_semicolon_in_a_plain_path_names_that_file(tmp_path, root):
    """urlparse cut `img;v1.jpg` at the `;` and read `img` instead."""
    (root / "imgs" / "img").write_bytes(b"the wrong file")
    (root / "imgs" / "img;v1.jpg").write_bytes(BODY)
    assert _fetcher(tmp_path, None, document_root=root).fetch("imgs/img;v1.jpg").read_bytes() == BODY


def test_dot_dot_after_a_symlinked_folder_names_the_file_label_studio_serves(tmp_path, root):
    """Label Studio collapses `..` on the text (normpath); resolving through the link first read another file."""
    (root / "other" / "deep").mkdir(parents=True)
    (root / "other" / "good.jpg").write_bytes(b"the wrong file")
    (root / "imgs" / "link").symlink_to(root / "other" / "deep")
    path = _fetcher(tmp_path, None, document_root=root).fetch("/data/local-files/?d=imgs/link/../good.jpg")
    assert path.read_bytes() == BODY


def test_of_several_d_parameters_the_last_names_the_file_as_in_label_studio(tmp_path, root):
    """Label Studio reads ``request.GET.get('d')``, Django's last value; the first was read, another file."""
    (root / "imgs" / "first.jpg").write_bytes(b"the wrong file")
    url = "/data/local-files/?d=imgs/first.jpg&d=imgs/good.jpg"
    assert _fetcher(tmp_path, None, document_root=root).fetch(url).read_bytes() == BODY


@pytest.mark.parametrize("url", ["imgs/go\0od.jpg", "/data/local-files/?d=imgs/go%00od.jpg"])
def test_a_nul_byte_names_no_file_for_training_or_prediction(tmp_path, root, url):
    """Training resolves a task's URL with resolve_local_url, which raised on a NUL: one task stopped the run."""
    from backend.labelstudio.tasks import resolve_local_url

    assert resolve_local_url(url, root) is None
    with pytest.raises(FetchError, match="no file name"):
        _fetcher(tmp_path, None, document_root=root).fetch(url)


def test_a_symlink_swapped_in_after_the_check_cannot_redirect_the_read(tmp_path, root, monkeypatch):
    """The check and the read used to be two lookups of one path: a swap between them read another file."""
    import backend.labelstudio.fetch as fetch

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    good = root / "imgs" / "good.jpg"
    real_resolve = fetch.resolve_local_url

    def resolve_then_swap(url, document_root):
        path = real_resolve(url, document_root)  # checked inside the root ...
        good.unlink()
        good.symlink_to(secret)  # ... then an attacker swaps the file for a link out of it
        return path

    monkeypatch.setattr(fetch, "resolve_local_url", resolve_then_swap)
    with pytest.raises(FetchError):
        _fetcher(tmp_path, None, document_root=root).fetch("/data/local-files/?d=imgs/good.jpg")
    assert not any(p.read_bytes() == b"secret" for p in (tmp_path / "cache").iterdir())


def test_a_changed_local_file_is_copied_again(tmp_path, root):
    fetcher = _fetcher(tmp_path, None, document_root=root)
    first = fetcher.fetch("imgs/good.jpg")
    (root / "imgs" / "good.jpg").write_bytes(BODY + b" changed")
    assert fetcher.fetch("imgs/good.jpg").read_bytes() == BODY + b" changed" and first.read_bytes() == BODY


# --- the cache: bounded, least recently used out, group-readable, a full disk is one task's error (item 10)


def test_the_cache_is_kept_under_its_bound_least_recently_used_out(tmp_path, other):
    import backend.labelstudio.fetch as fetch

    def fetch_once(url: str) -> Path:  # a fetcher of its own, gone at once: nothing stays pinned
        return _fetcher(tmp_path, None, cache_bytes=len(BODY) * 3).fetch(url)

    urls = [f"{other.url}/img/{i}.jpg" for i in range(3)]
    paths = [fetch_once(u) for u in urls]
    os.utime(paths[0], (1, 1))  # make 0 the oldest, then use it: 1 becomes the least recently used
    os.utime(paths[1], (2, 2))
    os.utime(paths[2], (3, 3))
    fetch_once(urls[0])
    fetch_once(f"{other.url}/img/3.jpg")
    left = {p.name for p in (tmp_path / "cache").iterdir()}
    assert paths[1].name not in left and paths[0].name in left
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= len(BODY) * 3
    assert fetch._cache_sizes._sizes[tmp_path / "cache"] <= len(BODY) * 3


def test_a_live_fetcher_s_files_are_not_pruned_under_it(tmp_path, other, root):
    """A training run reads its images after fetching them all: pruning them dropped them from training."""
    fetcher = _fetcher(tmp_path, None, document_root=root, cache_bytes=len(BODY) * 2)
    paths = [fetcher.fetch(f"{other.url}/img/{i}.jpg") for i in range(3)] + [fetcher.fetch("imgs/good.jpg")]
    assert all(p.read_bytes() == BODY for p in paths)
    del fetcher
    _fetcher(tmp_path, None, cache_bytes=len(BODY) * 2).fetch(f"{other.url}/img/next.jpg")
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= len(BODY) * 2  # unpinned: pruned


def test_a_cache_file_that_cannot_be_removed_does_not_fail_the_fetch(tmp_path, other, monkeypatch, caplog):
    """Pruning another user's file (a sticky folder) raised PermissionError out of fetch: a 500 in /predict."""
    others = {_fetcher(tmp_path, None).fetch(f"{other.url}/img/{i}.jpg") for i in range(2)}
    unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self in others:
            raise PermissionError(1, "Operation not permitted")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    path = _fetcher(tmp_path, None, cache_bytes=len(BODY)).fetch(f"{other.url}/img/2.jpg")
    assert path.read_bytes() == BODY and "cannot remove" in caplog.text


def test_cached_files_are_readable_by_the_group(tmp_path, other):
    path = _fetcher(tmp_path, None).fetch(f"{other.url}/img/g.jpg")
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_full_disk_is_a_clear_error_for_that_image(tmp_path, other, monkeypatch):
    import errno

    def no_space(fd, mode):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fchmod", no_space)
    with pytest.raises(FetchError, match="cannot write to the image cache .*No space left.*IMAGE_CACHE_BYTES"):
        _fetcher(tmp_path, None).fetch(f"{other.url}/img/full.jpg")
    assert not [p for p in (tmp_path / "cache").iterdir()]  # no partial file left behind
