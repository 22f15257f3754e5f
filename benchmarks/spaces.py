"""Does the reparametrized space (effective_decay, momentum, weight_decay) find good settings in fewer trials than
the plain one (lr, momentum, weight_decay)? Both searched on the same budget, over the same region.

    python -m benchmarks.spaces                       # CPU scale: width 0.25, 5,000 images, 4 epochs, N 24, K 3
    python -m benchmarks.spaces --trials 3 --seeds 1 --train-limit 300 --val-size 60 --width 0.125 --epochs 1

Protocol (also written into the JSON):
- region R: lr in [0.02, 4] (log), momentum in [0.8, 0.97], weight decay in [5e-5, 5e-3] (log): the plain box;
- plain samples R directly; reparam samples effective_decay = lr*wd/(1-momentum) log-uniformly over the smallest
  range that covers R ([5e-6, 0.667]), momentum and weight decay as plain does, and derives lr; a draw whose lr
  falls outside R is rejected before training (pruned, so TPE learns to avoid it) and not counted;
- both: the product's default sampler (TPE, multivariate), sampler seeds 0..K-1 (the same K for both), N trained
  trials per seed, the same data, config and training seed; the score is the validation accuracy.
Reported: best-so-far against trained trials (mean, min and max over seeds) as a PNG; a table of the best at N/4,
N/2 and N and of the trials needed to come within 0.5 pt of the best either space saw with that seed.

A script, not library code: it prints, reads argv and exits. Results go to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import optuna
import torch

from benchmarks.machine import cpu_model
from benchmarks.scale import add_scale_options, scale_overrides
from pipelines.config import Config
from pipelines.data import load_splits
from pipelines.errors import UserError
from pipelines.reuse import RunCache
from pipelines.train import check_data, run
from sweeper.objective import objective_value
from sweeper.space import Space, parse_space

SCHEMA = 1
REGION = {"lr": (0.02, 4.0), "momentum": (0.8, 0.97), "weight_decay": (5e-5, 5e-3)}
WITHIN = 0.005  # "within 0.5 pt of the best"
MAX_REJECTIONS = 2000  # per seed: a reparam run that cannot find the region stops here


def spaces() -> dict[str, Space]:
    (lr_lo, lr_hi), (m_lo, m_hi), (wd_lo, wd_hi) = REGION.values()
    ed_lo, ed_hi = lr_lo * wd_lo / (1 - m_lo), lr_hi * wd_hi / (1 - m_hi)  # the smallest range covering R
    common = {
        "momentum": {"type": "float", "low": m_lo, "high": m_hi},
        "weight_decay": {"type": "float", "low": wd_lo, "high": wd_hi, "log": True},
    }
    return {
        "reparam": parse_space(
            {"params": {"effective_decay": {"type": "float", "low": ed_lo, "high": ed_hi, "log": True}, **common}},
            source="reparam (region R)",
        ),
        "plain": parse_space(
            {"params": {"lr": {"type": "float", "low": lr_lo, "high": lr_hi, "log": True}, **common}},
            source="plain (region R)",
        ),
    }


def search(space: Space, config: Config, splits: Any, *, seed: int, trials: int, cache: RunCache) -> dict:
    """``trials`` trained trials of TPE (seed ``seed``) over ``space``; best-so-far after each, rejections."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(multivariate=True, seed=seed))
    scores: list[float] = []
    rejected = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal rejected
        cfg = config.with_overrides(space.suggest(trial, config))
        if not REGION["lr"][0] <= cfg.optim.lr <= REGION["lr"][1]:
            rejected += 1
            raise optuna.TrialPruned("lr outside the region")
        result = run(cfg, splits=splits, cache=cache, write_outputs=False)
        score = objective_value("val", result.history[-1]) if result.status != "diverged" else 0.0
        scores.append(score)
        print(f"  {space.source} seed {seed} trial {len(scores)}/{trials}: lr {cfg.optim.lr:.3g} val {score:.4f}",
              file=sys.stderr, flush=True)  # fmt: skip
        return score

    while len(scores) < trials and rejected < MAX_REJECTIONS:
        study.optimize(objective, n_trials=1)
    return {"scores": scores, "best_so_far": list(np.maximum.accumulate(scores)), "rejected": rejected}


def summarize(runs: dict[str, list[dict]], trials: int) -> dict[str, dict]:
    """Per space: mean best at N/4, N/2, N, and the mean trials to come within WITHIN of the seed's best overall."""
    seeds = len(next(iter(runs.values())))
    best_overall = [max(max(runs[s][k]["scores"]) for s in runs) for k in range(seeds)]
    table = {}
    for name, per_seed in runs.items():
        row: dict[str, Any] = {}
        for label, n in (("N/4", max(1, trials // 4)), ("N/2", max(1, trials // 2)), ("N", trials)):
            values = [r["best_so_far"][n - 1] for r in per_seed]
            row[label] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        needed = []
        for k, r in enumerate(per_seed):
            hits = [i + 1 for i, b in enumerate(r["best_so_far"]) if b >= best_overall[k] - WITHIN]
            needed.append(hits[0] if hits else None)
        reached = [n for n in needed if n is not None]
        row["trials_to_within_0.5pt"] = {"per_seed": needed, "mean": statistics.fmean(reached) if reached else None}
        row["rejected_draws"] = sum(r["rejected"] for r in per_seed)
        table[name] = row
    return table


def plot(runs: dict[str, list[dict]], path: Path, *, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for name, color in zip(runs, ("tab:red", "tab:blue"), strict=False):
        curves = np.array([r["best_so_far"] for r in runs[name]]) * 100
        x = np.arange(1, curves.shape[1] + 1)
        ax.plot(x, curves.mean(axis=0), color=color, lw=1.8, label=f"{name} (mean of {len(curves)} seeds)")
        ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.15, label=f"{name} min-max")
    ax.set(xlabel="trained trials", ylabel="best validation accuracy so far (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(table: dict[str, dict], trials: int) -> str:
    lines = [
        f"{'space':<8} {'best @N/4':>16} {'best @N/2':>16} {'best @N=' + str(trials):>16} "
        f"{'trials to -0.5pt':>17} {'rejected':>9}"
    ]
    for name, row in table.items():
        cells = [
            f"{100 * row[k]['mean']:.2f} ({100 * row[k]['min']:.1f}-{100 * row[k]['max']:.1f})"
            for k in ("N/4", "N/2", "N")
        ]
        needed = row["trials_to_within_0.5pt"]
        per_seed = ",".join("never" if n is None else str(n) for n in needed["per_seed"])
        mean = f"{needed['mean']:.1f}" if needed["mean"] is not None else "-"
        needed_cell = f"{mean} [{per_seed}]"
        lines.append(
            f"{name:<8} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16} {needed_cell:>17} {row['rejected_draws']:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scale_options(parser, train_limit=5000, epochs=4)
    parser.add_argument("--trials", type=int, default=24, help="trained trials per space and seed (N)")
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds per space (K)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    overrides = scale_overrides(args)
    try:
        config = Config().with_overrides(overrides)
        splits = load_splits(config.data)
        check_data(config, splits)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    cache = RunCache()
    runs: dict[str, list[dict]] = {name: [] for name in spaces()}
    for seed in range(args.seeds):
        for name, space in spaces().items():
            runs[name].append(search(space, config, splits, seed=seed, trials=args.trials, cache=cache))
    table = summarize(runs, args.trials)
    stamp = datetime.datetime.now(datetime.UTC)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else cpu_model()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = f"spaces-{stamp:%Y%m%dT%H%M%SZ}"
    title = f"reparam vs plain, N {args.trials}, K {args.seeds}, {args.epochs} epochs, width {args.width:g}"
    png = plot(runs, args.out_dir / f"{name}.png", title=title)
    protocol = {
        "region": REGION,
        "sampler": "TPESampler(multivariate=True, seed=k)",
        "seeds": args.seeds,
        "trials": args.trials,
        "score": "validation accuracy after the last epoch",
        "spaces": {n: s.to_dict() for n, s in spaces().items()},
        "rejection": "reparam draws with lr outside the region are pruned before training, not counted",
    }
    versions = {"torch": torch.__version__, "optuna": optuna.__version__, "python": platform.python_version()}
    record = {
        "schema": SCHEMA,
        "date": stamp.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.spaces " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "device": {"name": device, "threads": torch.get_num_threads(), **versions},
        "protocol": protocol,
        "config": config.to_dict(),
        "data": {
            "source": splits.source,
            "train": len(splits.train),
            "val": len(splits.val) if splits.val is not None else 0,
            "test": len(splits.test),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
        "table": table,
        "plot": str(png),
    }
    (args.out_dir / f"{name}.json").write_text(json.dumps(record, indent=2, default=float))
    print(format_table(table, args.trials))
    print(f"wrote {args.out_dir / (name + '.json')} and {png} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
