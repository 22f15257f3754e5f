"""The study's sampler and pruner: the fixed choices, and the one place each is checked and built.

Optuna is imported when a sampler or pruner is built, not with this module: the CLI's modules declare their
choices from these enums and stay light to import.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from pipelines.errors import UserError
from sweeper.objective import Objective

if TYPE_CHECKING:
    import optuna

    from sweeper.space import Space


class SamplerName(str, enum.Enum):
    tpe = "tpe"
    cmaes = "cmaes"
    random = "random"
    gp = "gp"
    grid = "grid"


MULTI_OBJECTIVE_UNSUPPORTED = frozenset({"cmaes"})  # Optuna's CMA-ES optimizes one objective only


class PrunerName(str, enum.Enum):
    median = "median"
    hyperband = "hyperband"
    none = "none"


def make_sampler(name: str, space: Space, *, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    kind = _choice(SamplerName, name, "sampler")
    if kind is SamplerName.tpe:
        # multivariate: models the (effective_decay, rho, alpha) interactions; constant liar: parallel workers
        # don't all sample the same point while trials are running; group: a conditional space (when:) is
        # modelled per set of parameters that occur together, rather than falling back to independent sampling.
        return optuna.samplers.TPESampler(multivariate=True, group=space.conditional, constant_liar=True, seed=seed)
    if kind is SamplerName.random:
        return optuna.samplers.RandomSampler(seed=seed)
    if kind is SamplerName.cmaes:
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if kind is SamplerName.gp:
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.GridSampler(space.grid(), seed=seed)


def make_pruner(name: str, *, epochs: int, objective: Objective | str = Objective.val) -> optuna.pruners.BasePruner:
    """The pruner ``name`` for a study of ``objective`` whose base config trains ``epochs`` epochs. A
    multi-objective study gets sweeper's own median rule (``sweeper.pruning``: Optuna prunes one objective only)."""
    import optuna

    kind = _choice(PrunerName, name, "pruner")
    objective = Objective(objective)
    if objective.multi:
        return _multi_objective_pruner(kind, objective)
    if kind is PrunerName.median:
        # no pruning before 3 trials have finished, nor in a trial's first quarter (One Cycle is still warming up)
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4))
    if kind is PrunerName.hyperband:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def _multi_objective_pruner(kind: enum.Enum, objective: Objective) -> optuna.pruners.BasePruner:
    import optuna

    from sweeper.pruning import BudgetMedianPruner

    if kind is PrunerName.hyperband:
        raise UserError(
            f"--pruner hyperband cannot prune two objectives ({objective.value}): its rungs compare trials at fixed "
            "epochs whatever their epoch budget; use median (the default) or none"
        )
    if kind is PrunerName.median:
        return BudgetMedianPruner(metric=f"{objective.split} accuracy")
    return optuna.pruners.NopPruner()


def _choice(kind: type[enum.Enum], name: str, what: str) -> enum.Enum:
    try:
        return kind(name)
    except ValueError as err:
        raise UserError(f"unknown {what} {name!r}: use one of {', '.join(m.value for m in kind)}") from err
