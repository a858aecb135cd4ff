"""Hostile input at every endpoint: bodies, types, sizes, ids, URLs and credentials.

Whatever arrives, the answer is a 4xx with a message saying what was wrong (or, for an image that cannot
be fetched, the documented 200 with an empty item for that task), never a 5xx; and a rejected request
writes nothing: no folder or file in the model store, no key or job in Redis.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from test_app import LABEL_CONFIG, broker, make_client, trained_store  # noqa: F401 (fixtures shared with test_app)

from backend.queue import Broker

MAX_BYTES = 64 * 1024
MAX_TASKS = 5
ENDPOINTS = [
    ("GET", "/health"),
    ("POST", "/setup"),
    ("POST", "/predict"),
    ("POST", "/webhook"),
    ("GET", "/versions"),
    ("GET", "/metrics"),
]
#: Endpoints that read no body: whatever body comes, they answer as usual
BODYLESS = {"/health", "/versions", "/metrics"}


@pytest.fixture()
def app(tmp_path, broker, trained_store):  # noqa: F811 (pytest fixtures)
    """A client of a backend with a current model for project 7, small limits, and nothing behind its URLs."""
    models, docs, _ = trained_store
    (docs.parent / "secret.jpg").write_bytes(b"not for the backend")  # what "../secret.jpg" would reach
    client = make_client(
        tmp_path,
        broker,
        model_dir=models,
        local_files_document_root=docs,
        max_request_bytes=MAX_BYTES,
        max_predict_tasks=MAX_TASKS,
        label_studio_url="http://127.0.0.1:1",
    )
    return Checked(client, models, broker)


class Checked:
    """Sends a request and checks the rules every answer keeps: no 5xx, a message with each 4xx, and nothing
    written for a rejected request."""

    def __init__(self, client, models: Path, broker: Broker) -> None:  # noqa: F811
        self.client, self.models, self.broker = client, models, broker

    def snapshot(self) -> tuple[dict[str, tuple[int, int]], list[bytes]]:
        files = {
            str(p.relative_to(self.models)): (p.stat().st_size, p.stat().st_mtime_ns) for p in self.models.rglob("*")
        }
        return files, sorted(self.broker.conn.keys())

    def send(self, method: str, path: str, **kwargs: Any):
        before = self.snapshot()
        r = self.client.open(path, method=method, **kwargs)
        assert r.status_code < 500, r.get_data(as_text=True)[:500]
        if r.status_code >= 400:
            message = r.get_json()["error"]
            assert message and "Traceback" not in message
            assert self.snapshot() == before, "a rejected request wrote something"
        return r

    def post(self, path: str, body: Any):
        return self.send("POST", path, json=body)


RAW_BODIES = {
    "not JSON": b"{not json",
    "empty": b"",
    "invalid UTF-8": b'{"project": "\xff\xfe"}',
    "a list": b"[1, 2]",
    "a string": b'"START_TRAINING"',
    "a number": b"7",
    "null": b"null",
    "NaN": b"NaN",
    "deep nesting": b'{"tasks": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    "deep objects": b'{"project": ' + b'{"id": ' * 5_000 + b"1" + b"}" * 5_001,
    "huge": b'{"tasks": [], "pad": "' + b"x" * (2 * MAX_BYTES) + b'"}',
}


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("kind", RAW_BODIES)
def test_every_endpoint_answers_any_body_without_a_5xx(app, method, path, kind):
    r = app.send(method, path, data=RAW_BODIES[kind], content_type="application/json")
    if path in BODYLESS:
        assert r.status_code == 200
    elif kind == "huge":
        assert r.status_code == 413 and f"MAX_REQUEST_BYTES ({MAX_BYTES} bytes)" in r.get_json()["error"]
    else:
        assert r.status_code == 400


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/health"),
        ("GET", "/setup"),
        ("GET", "/predict"),
        ("PUT", "/webhook"),
        ("DELETE", "/versions"),
        ("POST", "/metrics"),
        ("GET", "/../etc/passwd"),
    ],
)
def test_wrong_methods_and_paths_get_a_4xx(app, method, path):
    assert app.send(method, path).status_code in (404, 405)


def test_a_form_or_text_body_is_not_taken_for_json(app):
    assert app.send("POST", "/setup", data={"project": "7"}).status_code == 400
    assert (
        app.send(
            "POST", "/webhook", data=json.dumps({"action": "START_TRAINING", "project": 7}), content_type="text/plain"
        ).status_code
        == 400
    )


BAD_PROJECTS = [
    "٣٣",
    "٣٣.1700000000",
    "²",
    "9" * 5000,
    "9" * 13,
    "-3",
    "+3",
    " 3",
    "3 ",
    "",
    ".3",
    "0x1f",
    "../3",
    "3/../4",
    None,
    True,
    3.5,
    [],
    [3],
    {},
    {"id": "x"},
    {"id": "²"},
    {"id": None},
    -3,
]


@pytest.mark.parametrize("project", BAD_PROJECTS, ids=repr)
@pytest.mark.parametrize(
    "path,body",
    [
        ("/setup", {}),
        ("/predict", {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=imgs/a.jpg"}}]}),
        ("/webhook", {"action": "START_TRAINING"}),
        ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 1}}),
        ("/webhook", {"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 1, "task": 1, "parent_prediction": 2}]}),
    ],
)
def test_project_ids_are_ascii_digits_of_bounded_length_everywhere(app, project, path, body):
    r = app.post(path, {**body, "project": project})
    assert r.status_code == 400 and "'project'" in r.get_json()["error"]
    assert len(r.get_json()["error"]) < 300  # a 5,000-digit id is not echoed back whole


@pytest.mark.parametrize("project", ["٣٣", "²", "9" * 5000, "-1", "../7", "7/../8", "abc"])
def test_versions_of_a_bad_project_id_is_a_400(app, project):
    r = app.send("GET", "/versions", query_string={"project": project})
    assert r.status_code == 400 and "'project'" in r.get_json()["error"]


def test_one_folder_per_project_and_reads_create_none(app):
    before = app.snapshot()
    assert app.send("GET", "/versions", query_string={"project": "12"}).get_json()["projects"] == {"12": []}
    assert app.send("GET", "/versions", query_string={"project": "007"}).get_json()["projects"]["7"][0]["current"]
    assert app.post("/setup", {"project": "0007.1700000000"}).get_json()["model_version"] == "v1-test"
    assert app.snapshot() == before


def test_folders_the_old_id_check_let_in_break_neither_versions_nor_metrics(app):
    """``str.isdigit`` once let "٣٣" and "²" become folders; they are not projects and must not fail a listing."""
    for name in ("٣٣", "²"):
        (app.models / name).mkdir()
    try:
        listed = app.send("GET", "/versions").get_json()["projects"]
        assert set(listed) == {"7"}
        metrics = app.send("GET", "/metrics")
        assert metrics.status_code == 200 and "٣٣" not in metrics.get_data(as_text=True)
    finally:
        for name in ("٣٣", "²"):
            (app.models / name).rmdir()


WRONG_FIELDS = [
    # /setup
    ("/setup", {"project": "7", "schema": 5}, 400, "label config"),
    ("/setup", {"project": "7", "schema": ["<View/>"]}, 400, "label config"),
    ("/setup", {"project": "7", "schema": "<View"}, 422, "label config"),
    (
        "/setup",
        {"project": "7", "schema": "<!DOCTYPE x [<!ENTITY a SYSTEM 'file:///etc/passwd'>]><View>&a;</View>"},
        422,
        "label config",
    ),
    # /predict: the task list
    ("/predict", {"project": "7", "tasks": "1,2"}, 400, "'tasks'"),
    ("/predict", {"project": "7", "tasks": None}, 400, "'tasks'"),
    ("/predict", {"project": "7", "tasks": {"id": 1}}, 400, "'tasks'"),
    ("/predict", {"project": "7", "tasks": [1, 2]}, 400, "'tasks'"),
    ("/predict", {"project": "7", "tasks": [None]}, 400, "'tasks'"),
    ("/predict", {"project": "7"}, 400, "'tasks'"),
    # /predict: task ids
    ("/predict", {"project": "7", "tasks": [{"id": "abc"}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": "1"}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": None}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"data": {"image": "/x.jpg"}}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": True}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": -1}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": 0}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1.5}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": 2**64}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": 10**400}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": [1]}]}, 400, "'id'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}, {"id": "2"}]}, 400, "'id'"),
    # /predict: other fields
    ("/predict", {"project": "7", "tasks": [{"id": 1, "data": "/data/local-files/?d=imgs/a.jpg"}]}, 400, "'data'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1, "data": ["x"]}]}, 400, "'data'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "params": ["hostname"]}, 400, "'params'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "params": "x"}, 400, "'params'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "params": {"hostname": 5}}, 400, "'hostname'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "hostname": ["http://a"]}, 400, "'hostname'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "params": {"access_token": {"a": 1}}}, 400, "'access_token'"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "hostname": "ftp://evil.test"}, 400, "images"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "hostname": "http://[::1"}, 400, "images"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "access_token": "a token\nwith: a newline"}, 400, "images"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "label_config": 5}, 400, "label config"),
    ("/predict", {"project": "7", "tasks": [{"id": 1}], "label_config": "<View"}, 422, "label config"),
    ("/predict", {"tasks": [{"id": 1, "project": "²"}]}, 400, "'project'"),
    ("/predict", {"tasks": []}, 400, "'project'"),
    # /webhook
    ("/webhook", {"project": 7}, 400, "'action'"),
    ("/webhook", {"action": 5, "project": 7}, 400, "'action'"),
    ("/webhook", {"action": ["START_TRAINING"], "project": 7}, 400, "'action'"),
    ("/webhook", {"action": None, "project": 7}, 400, "'action'"),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": 7, "annotation": "a string"}, 400, "'annotation'"),
    ("/webhook", {"action": "ANNOTATION_UPDATED", "project": 7, "annotation": 5}, 400, "'annotation'"),
    ("/webhook", {"action": "ANNOTATIONS_DELETED", "project": 7, "annotation": "1,2"}, 400, "'annotation'"),
    ("/webhook", {"action": "ANNOTATION_UPDATED", "project": 7, "annotation": {"id": 1, "task": "abc"}}, 400, "task"),
    ("/webhook", {"action": "ANNOTATION_UPDATED", "project": 7, "annotation": {"id": 1, "task": -2}}, 400, "task"),
    (
        "/webhook",
        {"action": "ANNOTATION_UPDATED", "project": 7, "annotation": {"id": 1, "task": {"id": "x"}}},
        400,
        "task",
    ),
    (
        "/webhook",
        {"action": "ANNOTATION_UPDATED", "project": 7, "annotation": {"id": "x", "task": 3}},
        400,
        "annotation.id",
    ),
    ("/webhook", {"action": "ANNOTATION_UPDATED", "project": 7, "annotation": {"task": 3}}, 400, "annotation.id"),
    ("/webhook", {"action": "ANNOTATIONS_CREATED", "project": 7, "annotation": "a string"}, 400, "'annotation'"),
    ("/webhook", {"action": "ANNOTATIONS_CREATED", "project": 7, "annotation": [1, 2]}, 400, "'annotation'"),
    ("/webhook", {"action": "ANNOTATIONS_CREATED", "project": 7}, 400, "'annotation'"),
    (
        "/webhook",
        {"action": "ANNOTATIONS_CREATED", "project": 7, "annotation": [{"task": "abc", "parent_prediction": 1}]},
        400,
        "task",
    ),
    (
        "/webhook",
        {"action": "ANNOTATIONS_CREATED", "project": 7, "annotation": [{"task": None, "parent_prediction": 1}]},
        400,
        "task",
    ),
    (
        "/webhook",
        {"action": "ANNOTATIONS_CREATED", "project": 7, "annotation": [{"task": 1.0, "parent_prediction": 1}]},
        400,
        "task",
    ),
    (
        "/webhook",
        {
            "action": "ANNOTATIONS_CREATED",
            "project": 7,
            "annotation": [{"task": 1, "parent_prediction": 1}, {"task": "²", "parent_prediction": 1}],
        },
        400,
        "task",
    ),
]


@pytest.mark.parametrize(
    "path,body,status,fragment", WRONG_FIELDS, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(WRONG_FIELDS)]
)
def test_wrong_typed_fields_get_a_4xx_that_names_the_field(app, path, body, status, fragment):
    r = app.post(path, body)
    assert r.status_code == status and fragment in r.get_json()["error"]
    assert len(app.broker.queue) == 0


def test_too_many_tasks_is_a_413_that_says_what_to_do(app):
    tasks = [{"id": i, "data": {"image": f"/data/local-files/?d=imgs/{i}.jpg"}} for i in range(1, MAX_TASKS + 2)]
    r = app.post("/predict", {"project": "7", "tasks": tasks})
    assert r.status_code == 413
    message = r.get_json()["error"]
    assert (
        f"MAX_PREDICT_TASKS ({MAX_TASKS})" in message
        and "select fewer tasks" in message
        and str(MAX_TASKS + 1) in message
    )
    assert app.post("/predict", {"project": "7", "tasks": tasks[:MAX_TASKS]}).status_code == 200


def test_a_body_over_the_limit_is_a_413_at_any_endpoint_that_reads_one(app):
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=" + "a" * MAX_BYTES}}]
    for path, body in (
        ("/predict", {"project": "7", "tasks": tasks}),
        ("/setup", {"project": "7", "schema": "x" * MAX_BYTES}),
        ("/webhook", {"action": "ANNOTATIONS_CREATED", "project": 7, "annotation": [{"task": 1}] * 10_000}),
    ):
        r = app.post(path, body)
        assert r.status_code == 413 and "raise MAX_REQUEST_BYTES" in r.get_json()["error"], path


BAD_URLS = [
    "file:///etc/passwd",
    "FILE:///etc/passwd",
    "ftp://127.0.0.1:1/x.jpg",
    "gopher://127.0.0.1:1/_x",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGA",
    "javascript:alert(1)",
    "http://127.0.0.1:1\\@labelstudio.test/x.jpg",
    "http://127.0.0.1:1\\\\@labelstudio.test/x.jpg",
    "http://127.0.0.1:1#@labelstudio.test/x.jpg",
    "http://127.0.0.1:1?@labelstudio.test/x.jpg",
    "\\\\127.0.0.1\\share\\x.jpg",
    "//127.0.0.1:1/x.jpg",
    "/data/local-files/?d=../secret.jpg",
    "/data/local-files/?d=imgs/../../secret.jpg",
    "/data/local-files/?d=/etc/passwd",
    "../secret.jpg",
    "http://[::1",
    "http://127.0.0.1:99999/x.jpg",
    "/data/upload/7/" + "b" * 20_000 + ".jpg",
    "",
    "   ",
    "\x00",
    None,
    5,
    ["x"],
    {"url": "http://127.0.0.1:1/x.jpg"},
]


def test_unfetchable_image_urls_cost_their_own_task_an_empty_item(app):
    """Each bad URL gets the documented 200 with an empty item, in one request with a good task that still gets its
    prediction; nothing is downloaded or cached for them (nothing listens on 127.0.0.1:1)."""
    for start in range(0, len(BAD_URLS), MAX_TASKS - 1):
        predict_around_a_good_task(app, BAD_URLS[start : start + MAX_TASKS - 1], first_id=1000 + start)


def test_an_overlong_host_name_costs_its_task_only(app):
    """urllib3 refuses a host label over 63 characters with its own ValueError, not a requests exception."""
    predict_around_a_good_task(
        app, ["http://" + "a" * 64 + ".test/x.jpg", "http://" + "a" * 20_000 + ".test/x.jpg"], 2000
    )


def predict_around_a_good_task(app: Checked, urls: list[Any], first_id: int) -> None:
    tasks = [{"id": first_id + i, "data": {"image": url}} for i, url in enumerate(urls)]
    tasks.append({"id": 1, "data": {"image": "/data/local-files/?d=imgs/images/0000.jpg"}})
    before = app.snapshot()[0]
    r = app.post("/predict", {"project": "7.1700000000", "tasks": tasks, "label_config": LABEL_CONFIG})
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert results[:-1] == [[]] * len(urls), urls
    assert results[-1]["model_version"] == "v1-test"
    cached = [name for name in set(app.snapshot()[0]) - set(before) if name.startswith("image-cache/")]
    good = (app.models.parent / "docs" / "imgs" / "images" / "0000.jpg").read_bytes()
    assert all((app.models / name).read_bytes() == good for name in cached)  # only the good task's local copy


@pytest.fixture()
def guarded(tmp_path, broker):  # noqa: F811
    """A backend with basic auth whose credentials are not ASCII."""
    return Checked(
        make_client(tmp_path, broker, basic_auth_user="léad", basic_auth_pass="pässwörd€"), tmp_path / "models", broker
    )


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.mark.parametrize("method,path", [e for e in ENDPOINTS if e[1] != "/health"])
@pytest.mark.parametrize(
    "headers",
    [
        _basic("léad:wrong€".encode()),
        _basic("lead:pässwörd€".encode()),
        _basic(b"\xff\xfe:\xfa"),
        _basic(b"no colon"),
        _basic("léad:pässwörd€".encode("latin-1", "replace")),
        {"Authorization": "Basic !!!not base64"},
        {"Authorization": "Bearer pässwörd€".encode().decode("latin-1")},
        {"Authorization": "Basic"},
        {},
    ],
    ids=lambda h: repr(h)[:40],
)
def test_credentials_of_any_shape_get_a_401_never_a_500(guarded, method, path, headers):
    assert guarded.send(method, path, headers=headers, json={}).status_code == 401


def test_non_ascii_credentials_that_match_are_let_in(guarded):
    assert guarded.send("GET", "/versions", headers=_basic("léad:pässwörd€".encode())).status_code == 200
