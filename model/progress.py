"""How long work tells its caller how far it has got: one callback, ``report(phase, done, total)``.

Training, feature extraction and scoring take a ``report`` argument of this type. The command line
shows tqdm bars; the Label Studio backend passes a function that writes the running cycle's phase
and counts where ``/metrics``, the job's status and ``weather-al demo`` read them. The model package
knows nothing of where the numbers go.

Phases:
- ``features``: images whose frozen-backbone features were computed (cache misses only);
- ``training``: epochs done of the planned epochs (early stopping may end it before ``total``);
- ``scoring``: images scored.
"""

from __future__ import annotations

from collections.abc import Callable

Report = Callable[[str, int, int], None]
PHASES = ("features", "training", "scoring")


def silent(phase: str, done: int, total: int) -> None:
    """A ``Report`` that says nothing: the default."""
