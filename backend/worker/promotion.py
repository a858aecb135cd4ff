"""Whether a newly trained model replaces the current one."""

from __future__ import annotations

import logging
from typing import Any

from backend.store import ModelStore
from model.data.examples import Example
from model.training.evaluation import evaluate, mean_macro_f1

logger = logging.getLogger(__name__)


def should_promote(
    store: ModelStore, pid: str, current: str | None, model, examples: list[Example], tolerance: float = 0.0
) -> tuple[bool, dict[str, Any]]:
    """Promote when not worse than the current model, judged on labels NEITHER model trained on.

    "Not worse" allows ``tolerance`` of mean macro-F1: on a few dozen labels, a model trained on more
    data that scores a hair lower is a tie, and refusing it would leave the queue ranked by a model
    that has not seen the newest labels.
    """
    if current is None:
        return True, {"reason": "first model"}
    try:
        seen = set(store.trained_on(pid, current).get("train", []))
    except (FileNotFoundError, ValueError):
        seen = set()
    fair = [e for e in examples if int(e.key) not in seen]
    if len(fair) < 5:
        return True, {"reason": f"only {len(fair)} labels unseen by both models; newer labels win"}
    new_f1 = mean_macro_f1(evaluate(model.score(fair, workers=0)))
    old_f1 = mean_macro_f1(evaluate(store.load(pid, current).score(fair, workers=0)))
    return new_f1 >= old_f1 - tolerance, {
        "new_macro_f1": new_f1,
        "current_macro_f1": old_f1,
        "n": len(fair),
        "current": current,
    }
