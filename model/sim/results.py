"""What a simulation returns: its rows, and per run what the last model saw. Plain data, read by the report.

Both can be kept on disk (:meth:`RunTrace.save`, :func:`save_rows`), and :class:`RunStore` keeps whole
finished runs, so that a long benchmark cut short carries on where it stopped instead of starting over.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import write_atomic, write_json_atomic, write_text_atomic

#: The format of a saved RunTrace; a file of another version is refused rather than misread.
TRACE_FORMAT = 2


@dataclass
class RunTrace:
    """What the last model of one run saw, for analyses after the fact (scatter, redrawn probes).

    Pool-sized arrays are indexed like SimulationData.pool; pool_risk is the last cycle's risk score
    (model.al.confidence.RiskScore), NaN where the image could not be read. train_ids, holdout_ids,
    audit_ids, probe_ids: the labels the last model's plan knew, by role (its own picks excluded).
    """

    strategy: str
    seed: int
    pool_risk: np.ndarray
    correct_calibration: np.ndarray
    correct_labels: np.ndarray
    correct_truth: np.ndarray
    train_ids: np.ndarray
    holdout_ids: np.ndarray
    audit_ids: np.ndarray
    probe_ids: np.ndarray
    test_predicted_loss: np.ndarray
    test_true_loss: np.ndarray

    def save(self, path: Path) -> None:
        """Write the trace whole or not at all to ``path``, an .npz: its arrays, and a JSON entry for the rest.

        No pickles, so a trace from an older checkout or another machine loads without running code; compressed,
        since the benchmark's runs are kept in the repository (a 10,000 pool's trace is about 160 kB raw).
        """
        arrays = {name: getattr(self, name) for name in _array_fields()}
        meta = {"format": TRACE_FORMAT, "strategy": self.strategy, "seed": self.seed}

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:  # a file object: np.savez would append .npz to a path
                np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays)

        write_atomic(path, write)

    @classmethod
    def load(cls, path: Path) -> RunTrace:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            if meta.get("format") != TRACE_FORMAT:
                raise ValueError(f"{path}: trace format {meta.get('format')}, expected {TRACE_FORMAT}")
            return cls(strategy=meta["strategy"], seed=meta["seed"], **{name: npz[name] for name in _array_fields()})


def _array_fields() -> list[str]:
    """RunTrace's array fields, by their annotation (a string under ``from __future__ import annotations``)."""
    return [f.name for f in fields(RunTrace) if f.type == "np.ndarray"]


def save_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write result rows whole or not at all as JSON, which keeps their types (CSV would turn them into text)."""
    write_text_atomic(path, json.dumps(rows, default=_json_scalar))


def load_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return rows


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass
class SimulationResult:
    rows: list[dict[str, Any]]
    traces: list[RunTrace]
    settings: dict[str, Any]
    results_path: Path
    report_path: Path | None = None
    columns: list[str] = field(default_factory=list)


@dataclass
class FinishedRun:
    rows: list[dict[str, Any]]
    trace: RunTrace
    meta: dict[str, Any]


class RunStore:
    """The runs of one simulation setting kept in a folder, one sub-folder per (strategy, seed) run.

    A run's rows are rewritten after every cycle (so a later session can time cycles it never ran), its
    trace when it ends, and its ``done.json`` last: only a run with ``done.json`` counts as finished, so a
    run cut short at any point is run again from its start. Every file is written whole or not at all.
    """

    ROWS = "rows.json"
    TRACE = "trace.npz"
    DONE = "done.json"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._rows: dict[tuple[str, int], list[dict[str, Any]]] = {}

    def folder(self, strategy: str, seed: int) -> Path:
        return self.root / f"seed{seed}-{strategy}"

    def is_finished(self, strategy: str, seed: int) -> bool:
        return (self.folder(strategy, seed) / self.DONE).is_file()

    def start(self, strategy: str, seed: int) -> None:
        """Forget whatever the run's folder holds (a run cut short, or a finished one run again)."""
        folder = self.folder(strategy, seed)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self._rows[(strategy, seed)] = []

    def save_row(self, row: dict[str, Any]) -> None:
        """Add one cycle's row to its started run."""
        run = (row["strategy"], row["seed"])
        self._rows[run].append(row)
        save_rows(self.folder(*run) / self.ROWS, self._rows[run])

    def finish(self, trace: RunTrace, meta: dict[str, Any]) -> None:
        """Mark a started run whose every row was saved as finished, with its trace and ``meta`` (kept as is)."""
        folder = self.folder(trace.strategy, trace.seed)
        if not self._rows.get((trace.strategy, trace.seed)):
            raise ValueError(f"run {trace.strategy}, seed {trace.seed} has no saved rows")
        trace.save(folder / self.TRACE)
        write_json_atomic(folder / self.DONE, meta)

    def load(self, strategy: str, seed: int) -> FinishedRun:
        folder = self.folder(strategy, seed)
        return FinishedRun(
            rows=load_rows(folder / self.ROWS),
            trace=RunTrace.load(folder / self.TRACE),
            meta=json.loads((folder / self.DONE).read_text(encoding="utf-8")),
        )

    def recorded_rows(self) -> list[dict[str, Any]]:
        """Every saved row, of finished runs and of runs cut short alike."""
        return [row for path in sorted(self.root.glob(f"*/{self.ROWS}")) for row in load_rows(path)]
