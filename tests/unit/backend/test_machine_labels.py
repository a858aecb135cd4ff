"""Which labels train: people's do, a bulk accept's do not, and a machine label a person saved since is a person's."""

from __future__ import annotations

from backend.worker.project_data import read_project
from model.schema import LabelSchema


def _annotation(aid: int, weather: str, parent_prediction: int | None = None, updated_by: int | None = None) -> dict:
    result = [
        {"type": "choices", "from_name": "timeofday", "to_name": "image", "value": {"choices": ["day"]}},
        {"type": "choices", "from_name": "weather", "to_name": "image", "value": {"choices": [weather]}},
    ]
    return {
        "id": aid,
        "result": result,
        "parent_prediction": parent_prediction,
        "updated_by": updated_by,
        "created_at": f"2026-11-28T10:00:{aid:02d}",
        "was_cancelled": False,
    }


def test_untouched_machine_labels_never_train_but_a_person_s_edit_does(schema: LabelSchema) -> None:
    def task(tid: int, *annotations: dict) -> dict:
        return {"id": tid, "data": {"image": f"/data/local-files/?d=img/{tid}.jpg"}, "annotations": list(annotations)}

    tasks = [
        task(1, _annotation(1, "rain")),  # a person's label
        task(2, _annotation(2, "clear", parent_prediction=20)),  # a person submitted the pre-label
        task(3, _annotation(3, "clear", parent_prediction=30)),  # bulk accept, untouched
        task(4, _annotation(4, "snow", parent_prediction=40, updated_by=7)),  # bulk accept, corrected in the editor
        task(5),
    ]
    data = read_project(tasks, schema, machine_ids={3, 4})
    weather = schema.head("weather")
    assert [(tid, labels[1]) for tid, _, labels in data.labeled] == [
        (1, weather.index("rain")),
        (2, weather.index("clear")),
        (4, weather.index("snow")),
    ]
    assert [tid for tid, _ in data.unlabeled] == [5]
    assert not data.problems
