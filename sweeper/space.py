"""Search spaces: YAML -> Optuna suggestions -> config overrides.

The default space is Myrtle.ai's reparametrisation ("How to train your ResNet", part 5): with batch norm,
test accuracy is nearly flat along momentum rho and weight decay alpha once effective_decay = lr*alpha/(1-rho)
is fixed, so we sample (effective_decay, rho, alpha) and hand the trainer lr = effective_decay*(1-rho)/alpha.

A space file looks like::

    params:
      effective_decay: {type: float, low: 2.0e-4, high: 2.0e-2, log: true}
      momentum: {type: float, low: 0.8, high: 0.97}
      weight_decay: {type: float, low: 5.0e-5, high: 5.0e-3, log: true}
      optim.label_smoothing: {type: categorical, choices: [0.0, 0.1, 0.2]}
      train.epochs: {type: int, low: 10, high: 24, step: 2}
      schedule.policy: {type: categorical, choices: [one_cycle, step]}
      schedule.milestones: {type: categorical, choices: [[12, 18], [16, 20]], when: {schedule.policy: step}}

Short names: ``lr``, ``momentum``, ``weight_decay`` map to ``optim.*``; ``effective_decay`` is derived.
Any other name must be a dotted config key (``sweeper config show`` lists them). ``when`` makes a parameter
conditional (Optuna's define-by-run): it is suggested only in trials where each named categorical parameter
took one of the given values (those are suggested first, whatever the order in the file). Categorical choices
may be lists (e.g. milestones); Optuna records them by a text label such as ``[12, 18]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from pipelines.config import Config, config_keys, load_yaml, tricks_set
from pipelines.errors import UserError, one_line

ALIASES = {"lr": "optim.lr", "momentum": "optim.momentum", "weight_decay": "optim.weight_decay"}
EFFECTIVE_DECAY = "effective_decay"
TYPES = ("float", "int", "categorical")
GRID_POINTS = 4  # values per numeric parameter for --sampler grid
MAX_SETTINGS = 256  # settings of the categorical parameters a value is checked against before any trial

BUILTIN = {
    # Myrtle.ai part 5: 94% recipe lr 0.4, alpha 5e-4, rho 0.9 -> effective decay 2e-3, the range's log-centre.
    "reparam": {
        "params": {
            "effective_decay": {"type": "float", "low": 2e-4, "high": 2e-2, "log": True},
            "momentum": {"type": "float", "low": 0.8, "high": 0.97},
            "weight_decay": {"type": "float", "low": 5e-5, "high": 5e-3, "log": True},
        }
    },
    # The same budget over the plain (lr, rho, alpha) axes, for comparison; lr range covers the same lr values.
    "plain": {
        "params": {
            "lr": {"type": "float", "low": 0.02, "high": 4.0, "log": True},
            "momentum": {"type": "float", "low": 0.8, "high": 0.97},
            "weight_decay": {"type": "float", "low": 5e-5, "high": 5e-3, "log": True},
        }
    },
}


@dataclass(frozen=True)
class Param:
    name: str  # as written in the space: effective_decay, momentum, optim.label_smoothing, ...
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (earlier parameter, the values that make this one apply)

    @property
    def labels(self) -> list[Any]:
        """The categorical choices as Optuna records them: scalars as they are, lists as text like ``[12, 18]``."""
        return [_label(c) for c in self.choices]

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter is searched in a trial that drew ``values`` (by space name) so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    @property
    def key(self) -> str | None:
        """The config key it sets, or None for effective_decay (which sets optim.lr through the formula)."""
        if self.name == EFFECTIVE_DECAY:
            return None
        return ALIASES.get(self.name, self.name)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            labels = self.labels
            return self.choices[labels.index(trial.suggest_categorical(self.name, labels))]
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Any]:
        if self.type == "categorical":
            return self.labels
        assert self.low is not None and self.high is not None
        if self.step is not None:  # on the step lattice, as Optuna's distributions require
            count = round((self.high - self.low) / self.step) + 1
            picks = sorted({round(i * (count - 1) / (GRID_POINTS - 1)) for i in range(GRID_POINTS)})
            values = [round(self.low + k * self.step, 12) for k in picks]
            return [int(v) for v in values] if self.type == "int" else values
        if self.type == "int":
            values = {round(self.low + (self.high - self.low) * i / (GRID_POINTS - 1)) for i in range(GRID_POINTS)}
            return sorted(int(v) for v in values)
        if self.log:
            ratio = (self.high / self.low) ** (1 / (GRID_POINTS - 1))
            return [self.low * ratio**i for i in range(GRID_POINTS)]
        return [self.low + (self.high - self.low) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    source: str  # "reparam", "plain" or the file's path

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def conditional(self) -> bool:
        """Whether some parameter is searched only in some trials (``when``)."""
        return any(p.when for p in self.params)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.params:
            spec: dict[str, Any] = {"type": p.type}
            if p.type == "categorical":
                spec["choices"] = list(p.choices)
            else:
                spec.update(low=p.low, high=p.high)
                if p.log:
                    spec["log"] = True
                if p.step is not None:
                    spec["step"] = p.step
            if p.when:
                spec["when"] = {name: list(allowed) for name, allowed in p.when}
            out[p.name] = spec
        return {"params": out}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def suggest(self, trial: optuna.Trial, base: Config) -> dict[str, Any]:
        """Sample every parameter that applies, in order (define-by-run); return the config overrides (dotted
        key -> value), lr derived if needed."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.applies(values):
                values[p.name] = p.suggest(trial)
        return self.overrides(values, base)

    def overrides(self, values: Mapping[str, Any], base: Config) -> dict[str, Any]:
        """Sampled values (by space name) -> config overrides; effective_decay -> optim.lr = ed*(1-rho)/alpha."""
        out = {p.key: values[p.name] for p in self.params if p.key is not None and p.name in values}
        if EFFECTIVE_DECAY in values:
            rho = out.get("optim.momentum", base.optim.momentum)
            alpha = out.get("optim.weight_decay", base.optim.weight_decay)
            out["optim.lr"] = lr_from_effective_decay(values[EFFECTIVE_DECAY], momentum=rho, weight_decay=alpha)
        return out

    def grid(self) -> dict[str, list[Any]]:
        if self.conditional:
            raise UserError(
                f"space {self.source} has conditional parameters (when): the grid sampler cannot search it; "
                "use --sampler tpe or random"
            )
        return {p.name: p.grid() for p in self.params}

    def lr_finder_point(self, lr: float, base: Config) -> dict[str, float]:
        """The space's parameters at an LR-finder suggestion: ``lr`` with the config's momentum and weight decay
        (effective_decay derived from the three); other parameters are left to the sampler."""
        optim = base.optim
        at = {"optim.lr": lr, "optim.momentum": optim.momentum, "optim.weight_decay": optim.weight_decay}
        point = {p.name: at[p.key] for p in self.params if p.key in at}
        if EFFECTIVE_DECAY in self.names:
            point[EFFECTIVE_DECAY] = effective_decay(lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
        return point

    def check_against(self, base: Config, *, check: Callable[[Config], None] | None = None) -> None:
        """Fail early (before any trial) on a value that no trial could use, or an LR that cannot be derived.

        Each value (a choice, or a range's ends) must give a valid config in at least one setting of the space's
        other parameters (their choices, their ranges' ends): say one policy, where the value is a warm-up that
        another policy's peak rules out. A space too large to try every setting (MAX_SETTINGS) is not refused on
        this ground. A combination that only some trials draw can still be invalid: such a trial fails alone,
        with the reason in one line. ``check`` (e.g. against the data) must pass too for a setting to count.
        """
        for p in self.params:
            if p.key is None:
                continue
            for value in p.choices if p.type == "categorical" else (p.low, p.high):
                value = int(value) if p.type == "int" else value
                first_error: UserError | None = None
                settings = list(itertools.islice(self._settings(p, value), MAX_SETTINGS + 1))
                for setting in settings:
                    try:
                        config = base.with_overrides({**setting, p.key: value})
                        if check is not None:
                            check(config)
                        break
                    except UserError as err:
                        first_error = first_error or err
                else:
                    if len(settings) <= MAX_SETTINGS:  # every setting tried, and none takes this value
                        raise UserError(f"space {self.source}: {p.name} = {value!r} is invalid: {first_error}")
        names = set(self.names)
        searches_decay = "weight_decay" in names or "optim.weight_decay" in names
        if EFFECTIVE_DECAY in names and not searches_decay and base.optim.weight_decay <= 0:
            raise UserError("space: effective_decay needs weight_decay > 0 (sample it or set optim.weight_decay)")

    def _settings(self, param: Param, value: Any) -> Iterator[dict[str, Any]]:
        """Overrides to check ``param = value`` with: each setting of the other parameters (categorical ones at
        each choice, numeric ones at each end of their range) in which ``param`` is drawn, those not drawn left out."""
        others = [q for q in self.params if q is not param and q.key is not None]
        options = [q.choices if q.type == "categorical" else _ends(q) for q in others]
        for combo in itertools.product(*options):
            drawn = {q.name: c for q, c in zip(others, combo, strict=True)}
            drawn[param.name] = value
            if param.applies(drawn):
                yield {q.key: drawn[q.name] for q in others if q.applies(drawn)}


def _ends(param: Param) -> tuple[Any, ...]:
    assert param.low is not None and param.high is not None
    ends = (param.low, param.high) if param.low != param.high else (param.low,)
    return tuple(int(v) for v in ends) if param.type == "int" else ends


def _label(choice: Any) -> Any:
    """A categorical choice as Optuna can store it: None, bool, int, float and str as they are, others as text."""
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return yaml.safe_dump(choice, default_flow_style=True).strip()


def lr_from_effective_decay(effective_decay: float, *, momentum: float, weight_decay: float) -> float:
    """lambda = effective_decay * (1 - rho) / alpha (Myrtle.ai part 5)."""
    if weight_decay <= 0:
        raise UserError("effective_decay needs optim.weight_decay > 0")
    return effective_decay * (1.0 - momentum) / weight_decay


def effective_decay(*, lr: float, momentum: float, weight_decay: float) -> float:
    """lambda * alpha / (1 - rho)."""
    return lr * weight_decay / (1.0 - momentum)


def optim_params(config: Config) -> dict[str, float]:
    """The numbers every trial and replay logs: effective_decay, momentum, weight_decay and lr, the peak LR trained
    with; with optim.lr_scaling also lr_reference, optim.lr itself. effective_decay is taken at the reference batch
    size (optim.lr), as the space samples it."""
    optim = config.optim
    params = {
        "effective_decay": effective_decay(lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay),
        "momentum": optim.momentum,
        "weight_decay": optim.weight_decay,
        "lr": config.effective_lr,
    }
    if optim.lr_scaling != "none":
        params["lr_reference"] = optim.lr
    return params


def run_params(config: Config) -> dict[str, Any]:
    """What a trial, a replay seed and a range test's run log as MLflow params: :func:`optim_params`, and the trick
    switches ``config`` sets away from their defaults (dotted keys; a switch not logged is off). A study logs the
    keys its space searches as well, whatever value they draw."""
    return {**optim_params(config), **tricks_set(config)}


def load_space(spec: str | Path | None) -> Space:
    """A built-in name (reparam, plain), a YAML file, or None (reparam)."""
    if spec is None or str(spec) in BUILTIN:
        name = str(spec or "reparam")
        return parse_space(BUILTIN[name], source=name)
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(
            f"cannot read space file {path}: {err.strerror} (built-in spaces: {', '.join(BUILTIN)})"
        ) from err
    return space_from_yaml(text, source=str(path))


def space_from_yaml(text: str, *, source: str) -> Space:
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        raise UserError(f"space {source} is not valid YAML: {one_line(err)}") from err
    return parse_space(raw, source=source)


def parse_space(raw: Any, *, source: str) -> Space:
    """A space from its parsed YAML: each parameter checked (naming it), then the conditions, in dependency order."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("params"), Mapping):
        raise UserError(f"space {source} must be a mapping with a 'params' mapping of name -> spec")
    known = set(config_keys())
    params = [_parse_param(name, spec, where=f"space {source}: {name}", known=known)
              for name, spec in raw["params"].items()]  # fmt: skip
    if not params:
        raise UserError(f"space {source} is empty: give at least one parameter under 'params'")
    keys = [p.key for p in params if p.key]
    if len(set(keys)) != len(keys):
        raise UserError(f"space {source}: a config key is searched twice")
    if EFFECTIVE_DECAY in [p.name for p in params] and "optim.lr" in keys:
        raise UserError(f"space {source}: search effective_decay or lr, not both (lr is derived from effective_decay)")
    params = [
        dataclasses.replace(p, when=_parse_when(raw["params"][p.name].get("when"), params, name=p.name, source=source))
        for p in params
    ]
    return Space(_in_dependency_order(params, source), source)


FIELDS = {"type", "low", "high", "log", "step", "choices", "when"}  # what a parameter's spec may say


def _parse_param(name: str, spec: Any, *, where: str, known: set[str]) -> Param:
    """One parameter, its ``when`` left for later (it names other parameters). ``where`` names it in errors."""
    if name != EFFECTIVE_DECAY and ALIASES.get(name, name) not in known:
        raise UserError(
            f"{where}: unknown config key (use lr, momentum, weight_decay, effective_decay or a dotted key)"
        )
    if not isinstance(spec, Mapping):
        raise UserError(f"{where}: spec must be a mapping like {{type: float, low: 0.1, high: 1.0}}")
    unknown = set(spec) - FIELDS
    if unknown:
        raise UserError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    kind = spec.get("type", "categorical" if "choices" in spec else "float")
    if kind not in TYPES:
        raise UserError(f"{where}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: categorical needs a non-empty 'choices' list")
        return Param(name, kind, choices=tuple(_frozen(c) for c in choices))
    return _parse_range(name, kind, spec, where=where)


def _parse_range(name: str, kind: str, spec: Mapping[str, Any], *, where: str) -> Param:
    """A float or int parameter: low <= high, finite; a log range > 0; a step > 0 and not with log."""
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise UserError(f"{where}: {kind} needs numeric 'low' and 'high', got {low!r} and {high!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f"{where}: low and high must be finite")
    if low > high:
        raise UserError(f"{where}: low ({low}) must be <= high ({high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise UserError(f"{where}: a log range must be > 0, got low={low}")
    step = spec.get("step")
    if step is not None and (log or step <= 0):
        raise UserError(f"{where}: step must be > 0 and cannot be combined with log")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}: int range needs integer low and high")
    return Param(name, kind, float(low), float(high), log, step)


def _parse_when(
    raw: Any, params: Sequence[Param], *, name: str, source: str
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """Parameter ``name``'s ``when: {other: value or [values], ...}`` -> conditions on other categorical
    parameters of the space."""
    if raw is None:
        return ()
    where = f"space {source}: {name}"
    if not isinstance(raw, Mapping) or not raw:
        raise UserError(f"{where}: when must map categorical parameters to values, e.g. {{schedule.policy: step}}")
    by_name = {p.name: p for p in params} | {p.key: p for p in params if p.key}  # momentum or optim.momentum
    conditions = []
    for other, values in raw.items():
        param = by_name.get(other)
        if param is None or param.type != "categorical" or param.name == name:
            raise UserError(f"{where}: when names {other!r}, which is not another categorical parameter of the space")
        allowed = tuple(_frozen(v) for v in (values if isinstance(values, list) else [values]))
        if not allowed:
            raise UserError(f"{where}: when {other} names no value, so it would never be searched")
        missing = [v for v in allowed if v not in param.choices]
        if missing:
            raise UserError(f"{where}: when {other} = {missing[0]!r}, which is not one of its choices")
        conditions.append((param.name, allowed))
    return tuple(conditions)


def _frozen(value: Any) -> Any:
    """YAML lists as tuples (hashable, and what the config's list keys hold)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _in_dependency_order(params: list[Param], source: str) -> tuple[Param, ...]:
    """The parameters as written, except that each comes after those its ``when`` names (suggested first)."""
    placed: list[Param] = []
    waiting = list(params)
    while waiting:
        ready = [p for p in waiting if all(name in {q.name for q in placed} for name, _ in p.when)]
        if not ready:
            raise UserError(f"space {source}: the when conditions of {', '.join(p.name for p in waiting)} form a loop")
        placed.append(ready[0])
        waiting.remove(ready[0])
    return tuple(placed)
