"""`weather-al` reads its defaults through the typed settings, so a `.env` file counts as it does for `serve`."""

from __future__ import annotations

import pytest

from backend.cli import _log_level, main
from backend.settings import get_settings


@pytest.fixture
def in_folder_with_env(tmp_path, monkeypatch):
    for name in (
        "LOG_LEVEL",
        "LABEL_STUDIO_URL",
        "LABEL_STUDIO_HOST",
        "LABEL_STUDIO_API_KEY",
        "LABEL_STUDIO_ACCESS_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_the_log_level_comes_from_dot_env(in_folder_with_env):
    """The CLI read LOG_LEVEL from os.environ and never saw .env."""
    (in_folder_with_env / ".env").write_text("LOG_LEVEL=DEBUG\n")
    assert _log_level(None) == "DEBUG" and _log_level("warning") == "warning"


def test_settings_that_do_not_validate_leave_the_log_level_at_info(in_folder_with_env):
    (in_folder_with_env / ".env").write_text("BASIC_AUTH_USER=lead\n")  # half a pair: the settings refuse it
    assert _log_level(None) == "INFO"


def test_a_live_project_without_a_token_says_which_setting_is_missing(in_folder_with_env, capsys):
    assert main(["analyze", "--project", "3", "--out", str(in_folder_with_env / "out")]) == 2
    assert "LABEL_STUDIO_API_KEY setting" in capsys.readouterr().err
