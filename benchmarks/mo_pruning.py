"""Does pruning a multi-objective (time-to-accuracy) study save training without losing its front? The same
study run without pruning (``--pruner none``) and with it (``--pruner median``: ``sweeper.pruning``).

    python -m benchmarks.mo_pruning        # CPU scale: width 0.125, 1,000 images, batch 32, epochs {2,4,8}, N 20, K 3
    python -m benchmarks.mo_pruning --trials 3 --seeds 1 --train-limit 300 --val-size 60 --width 0.125 --epochs 1,2

Protocol (also written into the JSON):
- objective val,epochs: the validation accuracy against the epochs trained. Epochs, not train_seconds: on a shared
  machine the seconds of one setting vary with the others' load, and the front would follow that noise; the
  training seconds every trial spent are measured and reported all the same;
- space: train.epochs from ``--epochs`` (categorical) and lr log-uniform over ``--lr-range`` (wide: its top
  learns little or diverges); everything else the config's (One Cycle, peak at 5/24 of each run);
- both arms: the product's sampler (TPE, multivariate, constant liar: MOTPE for two objectives), sampler seeds
  0..K-1, N trials per arm and seed (pruned and diverged ones counted), the same data, config and training seed;
  the two arms alternate trial by trial (which one goes first alternating too), so both see the same machine load;
- trials run through the product's path: ``TrialReporter`` records each epoch and asks the study's pruner,
  ``trial_values`` records the run (a pruned trial's partial cost); in-memory Optuna storage, no MLflow.
Reported per arm: training seconds spent (every trial, pruned ones included), epochs trained, the front's
hypervolume (area dominated in (accuracy, epochs) up to the reference point: chance accuracy 1/classes and
the largest budget + its step), the cheapest complete trial reaching ``--target`` accuracy; mean and min-max over
seeds. A PNG of both arms' fronts per seed.

A script, not library code: it prints, reads argv and exits. Results go to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

from benchmarks.studies import add_scale_args, load_scale, result_name, spread, write_record
from pipelines.config import Config
from pipelines.errors import UserError
from pipelines.reuse import RunCache
from pipelines.train import run
from sweeper import records
from sweeper.objective import Objective
from sweeper.samplers import make_pruner, make_sampler
from sweeper.space import Space, parse_space
from sweeper.trials import StudyObserver, TrialReporter, trial_config, trial_values

OBJECTIVE = Objective.val_epochs
ARMS = ("none", "median")  # --pruner values: without pruning, with sweeper's multi-objective rule


def make_space(epochs: list[int], lr_range: tuple[float, float]) -> Space:
    return parse_space(
        {
            "params": {
                "lr": {"type": "float", "low": lr_range[0], "high": lr_range[1], "log": True},
                "train.epochs": {"type": "categorical", "choices": epochs},
            }
        },
        source="mo_pruning",
    )


def trial_objective(space: Space, config: Config, splits: Any, cache: RunCache, label: str) -> Any:
    """A study's objective as ``sweeper.trials.TrialRunner`` runs it, without MLflow and outputs."""

    def objective(trial: optuna.Trial) -> float | list[float]:
        cfg = trial_config(config.with_overrides(space.suggest(trial, config)), OBJECTIVE)
        trial.set_user_attr(records.CONFIG, cfg.to_yaml())
        reporter = TrialReporter(trial, OBJECTIVE, StudyObserver(), epochs=cfg.train.epochs)
        result = run(cfg, callbacks=[reporter], splits=splits, cache=cache, write_outputs=False)
        print(f"  {label} trial {trial.number}: lr {cfg.optim.lr:.3g}, {len(result.history)}/{cfg.train.epochs} "
              f"epochs, val {result.history[-1].val_accuracy}, {result.seconds:.1f} s, {result.status}",
              file=sys.stderr, flush=True)  # fmt: skip
        return trial_values(trial, result, OBJECTIVE)

    return objective


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    config = records.recorded_config(trial)
    return {
        "number": trial.number,
        "state": records.state_label(trial),
        "lr": trial.params.get("lr"),
        "budget": config.train.epochs if config else None,
        "epochs": records.epochs_run(trial) or 0,
        "val": records.accuracy(trial),
        "train_seconds": trial.user_attrs.get(records.TRAIN_SECONDS, 0.0),
        "reason": trial.user_attrs.get(records.REASON),
    }


def front(trials: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """The complete trials' Pareto front as (epochs, accuracy), by increasing epochs (and accuracy)."""
    points = sorted(((t["epochs"], t["val"]) for t in trials if t["state"] == "complete"), key=_cost_then_best)
    out: list[tuple[int, float]] = []
    for epochs, val in points:
        if not out or val > out[-1][1]:
            out.append((epochs, val))
    return out


def _cost_then_best(point: tuple[int, float]) -> tuple[int, float]:
    return point[0], -point[1]


def hypervolume(points: list[tuple[int, float]], *, ref_epochs: float, ref_accuracy: float) -> float:
    """The area (epochs x accuracy) the front dominates up to the reference point: more is better."""
    area, reached = 0.0, ref_accuracy
    for epochs, val in points:  # by increasing epochs, increasing accuracy
        if epochs < ref_epochs and val > reached:
            area += (ref_epochs - epochs) * (val - reached)
            reached = val
    return area


def cheapest(trials: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    reaching = [t for t in trials if t["state"] == "complete" and t["val"] >= target]
    return min(reaching, key=_cheapest_key, default=None)


def _cheapest_key(trial: dict[str, Any]) -> tuple[float, float]:
    return trial["epochs"], -trial["val"]


def summarize_seed(trials: list[dict[str, Any]], *, target: float, ref: dict[str, float]) -> dict[str, Any]:
    found = cheapest(trials, target)
    points = front(trials)
    return {
        "train_seconds": sum(t["train_seconds"] for t in trials),
        "epochs": sum(t["epochs"] for t in trials),
        "hypervolume": hypervolume(points, ref_epochs=ref["epochs"], ref_accuracy=ref["accuracy"]),
        "front": points,
        "cheapest_to_target": None if found is None else {"epochs": found["epochs"], "val": found["val"]},
        "pruned": sum(t["state"] == "pruned" for t in trials),
        "diverged": sum(t["state"] == "diverged" for t in trials),
    }


def summarize(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per arm: mean and min-max over seeds; the saving against the unpruned arm of the same seed."""
    table: dict[str, dict[str, Any]] = {}
    for arm, seeds in per_seed.items():
        reached = [s["cheapest_to_target"]["epochs"] for s in seeds if s["cheapest_to_target"]]
        table[arm] = {
            "train_seconds": spread([s["train_seconds"] for s in seeds]),
            "epochs": spread([s["epochs"] for s in seeds]),
            "hypervolume": spread([s["hypervolume"] for s in seeds]),
            "cheapest_to_target": {
                "per_seed": [s["cheapest_to_target"] and s["cheapest_to_target"]["epochs"] for s in seeds],
                **(spread(reached) if reached else {}),
            },
            "pruned": sum(s["pruned"] for s in seeds),
            "diverged": sum(s["diverged"] for s in seeds),
        }
    base, pruned = per_seed["none"], per_seed["median"]
    for key in ("train_seconds", "epochs"):
        saved = [1 - p[key] / b[key] for b, p in zip(base, pruned, strict=True)]
        table["median"][f"{key}_saved"] = spread(saved)
    hv = table["none"]["hypervolume"]
    table["goal"] = {
        "train_seconds_saved_at_least_30pct": table["median"]["train_seconds_saved"]["mean"] >= 0.30,
        "hypervolume_within_unpruned_spread_or_above": table["median"]["hypervolume"]["mean"] >= hv["min"],
    }
    return table


def plot(
    per_seed: dict[str, list[dict[str, Any]]],
    trials: dict[str, list[list[dict[str, Any]]]],
    path: Path,
    *,
    title: str,
    target: float,
    ref_epochs: float,
) -> Path:
    """One panel per seed: each arm's front as a staircase (to the reference's epochs), its complete trials as
    dots, the pruned arm's pruned trials as crosses at the epoch they stopped."""
    seeds = len(per_seed["none"])
    fig, axes = plt.subplots(1, seeds, figsize=(3.8 * seeds + 0.6, 4.0), layout="constrained", squeeze=False)
    styles = {"none": ("tab:blue", "-", "no pruning"), "median": ("tab:red", "--", "median pruning")}
    for k, ax in enumerate(axes[0]):
        for arm, (color, line, name) in styles.items():
            result, done = per_seed[arm][k], trials[arm][k]
            epochs = [e for e, _ in result["front"]] + [ref_epochs]
            vals = [100 * v for _, v in result["front"]]
            label = f"{name}: {result['epochs']} epochs, {result['train_seconds']:.0f} s"
            ax.step(epochs, [*vals, vals[-1]] if vals else [], where="post", color=color, ls=line, lw=1.6,
                    label=label)  # fmt: skip
            complete = [t for t in done if t["state"] == "complete"]
            ax.scatter([t["epochs"] for t in complete], [100 * t["val"] for t in complete], s=12, color=color,
                       alpha=0.45)  # fmt: skip
            stopped = [t for t in done if t["state"] == "pruned" and t["val"] is not None]
            where = f"{name}: pruned trials, where they stopped" if stopped else None
            ax.scatter([t["epochs"] for t in stopped], [100 * t["val"] for t in stopped], s=22, marker="x",
                       color=color, alpha=0.8, label=where)  # fmt: skip
        ax.axhline(100 * target, color="gray", lw=0.8, ls=":")
        ax.set(xlabel="epochs trained", title=f"sampler seed {k}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("validation accuracy (%)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(table: dict[str, dict[str, Any]], target: float) -> str:
    def cell(stats: dict[str, float], spec: str, scale: float = 1.0) -> str:
        lo, hi = scale * stats["min"], scale * stats["max"]
        return f"{scale * stats['mean']:{spec}} ({lo:{spec}}-{hi:{spec}})"

    lines = [
        f"{'pruner':<7} {'train s':>20} {'epochs':>17} {'hypervolume':>22} "
        f"{'cheapest to ' + format(target, '.0%'):>20} {'pruned':>7} {'diverged':>9}"
    ]
    for arm in ARMS:
        row = table[arm]
        reach = row["cheapest_to_target"]
        per_seed = ",".join("never" if e is None else str(e) for e in reach["per_seed"])
        lines.append(
            f"{arm:<7} {cell(row['train_seconds'], '.0f'):>20} {cell(row['epochs'], '.0f'):>17} "
            f"{cell(row['hypervolume'], '.3f'):>22} {per_seed + ' epochs':>20} {row['pruned']:>7} {row['diverged']:>9}"
        )
    median = table["median"]
    lines.append(
        f"saved by pruning: training seconds {cell(median['train_seconds_saved'], '.0f', 100)} %, "
        f"epochs {cell(median['epochs_saved'], '.0f', 100)} %"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scale_args(parser, train_limit=1000, val_size=500, width=0.125, batch_size=32)
    parser.add_argument("--epochs", default="2,4,8", help="the epoch budgets train.epochs is drawn from")
    parser.add_argument("--lr-range", default="0.01,4", help="lr drawn log-uniformly in LOW,HIGH")
    parser.add_argument("--trials", type=int, default=20, help="trials per arm and seed (N), pruned ones counted")
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds (K)")
    parser.add_argument("--target", type=float, default=0.30, help="the accuracy the cheapest trial must reach")
    args = parser.parse_args(argv)
    budgets = sorted(int(e) for e in args.epochs.split(","))
    low, high = (float(v) for v in args.lr_range.split(","))
    try:
        config, splits = load_scale(args, epochs=budgets[-1])
        space = make_space(budgets, (low, high))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    step = budgets[-1] - budgets[-2] if len(budgets) > 1 else 1
    ref = {"epochs": float(budgets[-1] + step), "accuracy": 1 / len(splits.classes)}
    started = time.perf_counter()
    cache = RunCache()
    per_seed: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    trials: dict[str, list[list[dict[str, Any]]]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        studies = {
            arm: optuna.create_study(
                study_name=f"{arm}-{seed}",
                directions=OBJECTIVE.directions,
                sampler=make_sampler("tpe", space, seed=seed),
                pruner=make_pruner(arm, epochs=budgets[-1], objective=OBJECTIVE),
            )
            for arm in ARMS
        }
        objectives = {arm: trial_objective(space, config, splits, cache, f"{arm} seed {seed}") for arm in ARMS}
        for n in range(args.trials):
            for arm in ARMS if n % 2 == 0 else ARMS[::-1]:  # alternate: both arms see the same machine load
                studies[arm].optimize(objectives[arm], n_trials=1)
        for arm, study in studies.items():
            done = [trial_record(t) for t in study.get_trials(deepcopy=False) if t.state != TrialState.RUNNING]
            trials[arm].append(done)
            per_seed[arm].append(summarize_seed(done, target=args.target, ref=ref))
    table = summarize(per_seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name, stamp = result_name("mo_pruning")
    title = (
        f"{OBJECTIVE.value} fronts without and with pruning\nN {args.trials} trials per arm, epochs {{{args.epochs}}}, "
        f"width {args.width:g}, {args.train_limit} images"
    )
    png = plot(
        per_seed, trials, args.out_dir / f"{name}.png", title=title, target=args.target, ref_epochs=ref["epochs"]
    )
    protocol = {
        "objective": OBJECTIVE.value,
        "space": space.to_dict(),
        "sampler": "sweeper's tpe: TPESampler(multivariate=True, constant_liar=True, seed=k) (MOTPE)",
        "pruners": {"none": "NopPruner", "median": "sweeper.pruning.BudgetMedianPruner (defaults)"},
        "seeds": args.seeds,
        "trials": args.trials,
        "order": "arms alternate trial by trial, the first of each pair alternating",
        "hypervolume_reference": ref,
        "target": args.target,
    }
    print(format_table(table, args.target))
    body = {"protocol": protocol, "per_seed": per_seed, "trials": trials, "table": table, "plot": str(png)}
    write_record(
        args, argv, module="benchmarks.mo_pruning", name=name, stamp=stamp, config=config, splits=splits,
        started=started, body=body,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
