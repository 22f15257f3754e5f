"""The study's live view: a table of its trials on stderr, columns from the study's space and objective.

Its rows are ``sweeper.records.trial_row``, built from the trials as the storage holds them: told of each trial
as a ``sweeper.trials.StudyObserver`` while trials run in this process, refreshed from the storage
(``records.trial_rows``) while workers run them; ``study show`` prints it once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from sweeper.cli._common import err_console
from sweeper.objective import Objective

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from sweeper.space import Param, Space

ROWS_SHOWN = 30  # the latest trials; older ones scroll away
DERIVED_LR = "λα/(1-ρ)"  # effective_decay, the one parameter that sets no config key itself (it derives optim.lr)
# Column headers for the reparametrised space's axes (Myrtle.ai part 5); any other parameter shows its own name.
LABELS = {
    "optim.lr": "λ",
    "optim.momentum": "ρ",
    "optim.weight_decay": "α",
}


class LiveStudyView:
    """A live table of the trials (number, every searched parameter, objective, test accuracy, state, time; for a
    multi-objective study also the cost and a mark on the Pareto front), refreshed as trials start, finish epochs
    and end."""

    def __init__(
        self,
        name: str,
        *,
        space: Space | None = None,
        objective: Objective | str = "val",
        quiet: bool = False,
        console: Console | None = None,
    ) -> None:
        self.name = name
        self.space = space
        self.objective = Objective(objective)
        self.console = console or err_console
        self.quiet = quiet
        self.rows: dict[int, dict[str, Any]] = {}
        self.live: Live | None = None

    # -- what sweeper.trials.StudyObserver hears
    def on_study(self, study: optuna.Study, *, space: Space, objective: Objective) -> None:
        from sweeper.records import trial_rows

        self.space, self.objective = space, Objective(objective)
        self.show_rows(trial_rows(study))

    def on_trial(self, trial: FrozenTrial, *, front: set[int] | None = None) -> None:
        from sweeper.records import trial_row

        attrs = {}  # the MLflow run id is not shown: no need for the study's synced ids
        self.rows[trial.number] = {
            **trial_row(trial, objective=self.objective, study_attrs=attrs, front=front or set()),
            "_built": time.perf_counter(),
        }
        if front is not None and self.objective.multi:
            for number, row in self.rows.items():
                row["pareto"] = number in front
        self._refresh()

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        """Replace the table's rows with ``records.trial_row`` rows (the multi-worker view, `study show`)."""
        built = time.perf_counter()
        for row in rows:
            self.rows[row["number"]] = {**row, "_built": built}
        self._refresh()

    # -- the table
    def table(self) -> Table:
        table = Table(title=f"study {self.name}", expand=False)
        columns = self._columns()
        for header, _ in columns:
            # the trial number and the accuracies keep their width when the terminal is narrow: they are what
            # a user reads off to pass --trial N
            keep = {"#": 4, "state": 8}.get(header, 6 if header in ("val", "test") else None)
            table.add_column(header, justify="left" if header == "state" else "right", no_wrap=True, min_width=keep)
        for number in sorted(self.rows)[-ROWS_SHOWN:]:
            row = self.rows[number]
            table.add_row(*(cell(row) for _, cell in columns))
        return table

    def _columns(self) -> list[tuple[str, Any]]:
        """(header, row -> text) for each column: every searched parameter, lr beside effective_decay."""
        columns: list[tuple[str, Any]] = [("#", _number)]
        for param in self.space.params if self.space is not None else ():
            if param.key is None:
                columns += [(DERIVED_LR, _param_cell(param)), (LABELS["optim.lr"], _lr)]
            else:
                columns.append((LABELS.get(param.key, param.name), _param_cell(param)))
        split, cost = self.objective.split, self.objective.cost
        columns.append((split, _value))
        if split != "test":
            columns.append(("test", _test))
        if cost:
            columns += [("train s" if cost == "train_seconds" else "epochs", _cost), ("front", _front)]
        columns += [("state", _state), ("time", _time)]
        return columns

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.table())

    def __enter__(self) -> LiveStudyView:
        if not self.quiet:
            self.live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self.table())
            self.live.stop()
            self.live = None
            if not self.console.is_terminal:  # rich leaves the last line of the table open: end it
                self.console.line()


def _param_cell(param: Param) -> Any:
    """Categorical choices as written, log-scaled floats as 8.8e-03, others with 3 significant digits."""
    spec = ".1e" if param.type == "float" and param.log else ".3g"

    def cell(row: Mapping[str, Any]) -> str:
        value = (row.get("params") or {}).get(param.name)
        return str(value) if param.type == "categorical" and value is not None else fmt(value, spec)

    return cell


def _number(row: Mapping[str, Any]) -> str:
    return str(row["number"])


def _lr(row: Mapping[str, Any]) -> str:
    return fmt(row.get("lr"), ".3g")


def _value(row: Mapping[str, Any]) -> str:
    return pct(row.get("value"))


def _cost(row: Mapping[str, Any]) -> str:
    return fmt(row.get("cost"))


def _front(row: Mapping[str, Any]) -> str:
    return "★" if row.get("pareto") else ""


def _test(row: Mapping[str, Any]) -> str:
    return pct(row.get("test_accuracy"))


def _state(row: Mapping[str, Any]) -> str:
    state = row.get("state", "")
    return f"running (epoch {row['epoch']})" if state == "running" and row.get("epoch") else state


def _time(row: Mapping[str, Any]) -> str:
    """The trial's seconds; a running trial's go on counting from when its row was read."""
    seconds = row.get("seconds")
    if seconds is not None and row.get("state") == "running":
        seconds += time.perf_counter() - row.get("_built", time.perf_counter())
    return f"{seconds:.0f}s" if seconds is not None else ""


def fmt(value: Any, spec: str = ".4g") -> str:
    """A table cell: floats with ``spec``, anything else as text, None as nothing."""
    if value is None:
        return ""
    return format(value, spec) if isinstance(value, float) else str(value)


def pct(value: Any) -> str:
    """A fraction as a percentage cell, e.g. 0.9071 -> 90.7%."""
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else ""
