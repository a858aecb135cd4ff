"""Install and run a real, local Label Studio for `weather-al demo` and the end-to-end tests.

Label Studio is the backend's only real client, so the project tests against the actual server rather
than a mock (see docs/label-studio.md). It lives in its own virtual environment because its pinned
dependencies (Django and friends) must not mix with the backend's.

Linux/macOS only (the venv layout is `bin/`, and the server is stopped through its process group).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
#: The server's stdout and stderr, inside its data dir.
LOG_FILENAME = "label-studio.log"

#: Variables passed through from the caller's environment. Everything else is dropped: Label Studio
#: reads unprefixed names too (`HOST`, `PORT`, `USERNAME`, `DJANGO_DB`, ...), so inheriting the
#: caller's environment would let unrelated settings reconfigure the server.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE")

_HEALTH_POLL_S = 0.5
_STOP_GRACE_S = 10.0
_LOG_TAIL_LINES = 40


def default_venv() -> Path:
    """Where the Label Studio venv lives unless told otherwise ($WEATHER_AL_LS_VENV overrides)."""
    configured = os.environ.get("WEATHER_AL_LS_VENV")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "weather-al" / f"label-studio-{LABEL_STUDIO_VERSION}"


def _installed_version(venv: Path) -> str | None:
    """The label-studio version installed in `venv`, or None when the venv or the package is missing.

    Asked of the venv's own interpreter, so a half-finished install (executable written, metadata not)
    does not count as installed.
    """
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _run_install_step(args: list[str], what: str) -> None:
    """Run one install command; on failure raise with the tail of its output."""
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise RuntimeError(
            f"Could not {what} (exit {result.returncode}): {' '.join(args)}\n{tail}\n"
            "Check network access to the package index, or point WEATHER_AL_LS_VENV at a venv "
            f"that already has label-studio=={LABEL_STUDIO_VERSION}."
        )


def ensure_label_studio(venv: Path | None = None) -> Path:
    """Return the `label-studio` executable of a venv holding label-studio==LABEL_STUDIO_VERSION.

    Creates the venv and installs Label Studio (1-2 min, ~1 GB) when missing or at another version.
    A file lock next to the venv lets concurrent callers (parallel test sessions) share one install.
    """
    venv = Path(venv).expanduser() if venv is not None else default_venv()
    executable = venv / "bin" / "label-studio"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = _installed_version(venv)
        if installed == LABEL_STUDIO_VERSION and executable.exists():
            logger.debug("Label Studio %s found at %s", installed, executable)
            return executable
        if not (venv / "bin" / "python").exists():
            logger.info("Creating a venv for Label Studio at %s", venv)
            _run_install_step([sys.executable, "-m", "venv", str(venv)], "create the Label Studio venv")
        logger.info(
            "Installing label-studio==%s into %s (found %s; takes 1-2 minutes)",
            LABEL_STUDIO_VERSION,
            venv,
            installed or "nothing",
        )
        started = time.monotonic()
        _run_install_step(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                f"label-studio=={LABEL_STUDIO_VERSION}",
            ],
            f"install label-studio=={LABEL_STUDIO_VERSION}",
        )
        installed = _installed_version(venv)
        if installed != LABEL_STUDIO_VERSION or not executable.exists():
            raise RuntimeError(
                f"pip finished but {venv} holds label-studio {installed!r}, not {LABEL_STUDIO_VERSION}; "
                f"delete {venv} and try again."
            )
        logger.info("Installed Label Studio %s in %.0f s", installed, time.monotonic() - started)
        return executable


def _free_port() -> int:
    """A port free on 127.0.0.1 right now. Chosen up front because Label Studio silently moves to
    the next free port when the one it is given is busy, and the caller would then poll the wrong one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


@dataclass
class LocalLabelStudio:
    """A running Label Studio server started by `start_label_studio`; stop it with `stop()` or `with`."""

    url: str
    username: str
    password: str
    token: str  # legacy API token (40 hex), used as `Authorization: Token <token>`
    data_dir: Path
    document_root: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Terminate the server (its whole process group), killing it if it ignores SIGTERM."""
        if self.process.poll() is not None:
            return
        logger.info("Stopping Label Studio at %s (pid %d)", self.url, self.process.pid)
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("Label Studio ignored SIGTERM for %.0f s; killing it", _STOP_GRACE_S)
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> LocalLabelStudio:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # already gone


def _server_env(data_dir: Path, document_root: Path, username: str, password: str, token: str) -> dict[str, str]:
    """The environment from docs/label-studio.md "Starting a real server headless"."""
    env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        # Legacy tokens must be enabled at the FIRST start of a data dir, else `Token` auth is refused.
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        # Both are needed for an ML backend on loopback/private addresses (else its webhook gets 403).
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        COLLECT_ANALYTICS="false",
        LATEST_VERSION_CHECK="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback URL we built)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_until_up(server: LocalLabelStudio, timeout: float) -> None:
    """Poll /health until {"status": "UP"}; raise with the log tail if the server dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"Label Studio exited with code {server.process.returncode} before it was ready. "
                f"Log {server.log_path}:\n{_log_tail(server.log_path)}"
            )
        try:
            status, body = _get(f"{server.url}/health")
            if status == 200 and b'"UP"' in body:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(_HEALTH_POLL_S)
    server.stop()
    raise RuntimeError(
        f"Label Studio did not answer {server.url}/health within {timeout:.0f} s (stopped it). "
        f"Log {server.log_path}:\n{_log_tail(server.log_path)}"
    )


def _check_token(server: LocalLabelStudio) -> None:
    """Fail early when the token does not authenticate, e.g. a data dir first started with another
    token or without legacy tokens: Label Studio keeps the first start's user and settings."""
    status, body = _get(f"{server.url}/api/current-user/whoami", server.token)
    if status != 200:
        server.stop()
        raise RuntimeError(
            f"Label Studio is up but refuses the legacy token (HTTP {status}: {body[:200]!r}). "
            f"The data dir {server.data_dir} was probably first started with another user, token or "
            "without LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN; use a fresh data dir or the original token."
        )


def start_label_studio(
    data_dir: Path,
    document_root: Path,
    port: int | None = None,
    username: str = "admin@weather-al.local",
    password: str | None = None,
    token: str | None = None,
    timeout: float = 240,
    venv: Path | None = None,
) -> LocalLabelStudio:
    """Start Label Studio on 127.0.0.1 and return once /health is UP and the token authenticates.

    `data_dir` holds its database and LOG_FILENAME; local-file tasks (`/data/local-files/?d=...`)
    resolve under `document_root`. Password and token are random unless given (token: 40 hex chars,
    the legacy-token format). A fresh data dir is ready in ~30-60 s, a reused one in a few seconds.
    Label Studio keeps the user, password and token of a data dir's FIRST start and ignores new ones,
    so to reuse a data dir pass the original password and token (a wrong token raises here).
    """
    executable = ensure_label_studio(venv)
    data_dir = Path(data_dir).resolve()
    document_root = Path(document_root).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    password = password or secrets.token_urlsafe(16)
    token = token or secrets.token_hex(20)
    log_path = data_dir / LOG_FILENAME

    logger.info("Starting Label Studio %s on port %d (data %s, log %s)", LABEL_STUDIO_VERSION, port, data_dir, log_path)
    started = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
            env=_server_env(data_dir, document_root, username, password, token),
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() reaches any children too
        )
    server = LocalLabelStudio(
        url=f"http://127.0.0.1:{port}",
        username=username,
        password=password,
        token=token,
        data_dir=data_dir,
        document_root=document_root,
        log_path=log_path,
        process=process,
    )
    try:
        _wait_until_up(server, timeout)
        _check_token(server)
    except BaseException:
        server.stop()
        raise
    logger.info("Label Studio ready at %s after %.1f s", server.url, time.monotonic() - started)
    return server
