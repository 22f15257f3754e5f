"""How few epochs does the recipe need with the bag of tricks on? Each trick alone, and all together, against the
recipe's accuracy after E epochs.

    python -m benchmarks.tricks                       # CPU scale: width 0.25, 2,000 + 1,000 images, E 4, K 3
    python -m benchmarks.tricks --epochs 2 --seeds 1 --train-limit 300 --val-size 60 --width 0.125 --tricks ema

Protocol (also written into the JSON):
- the recipe (every switch off) trains for E epochs with seeds 0..K-1; the target is its mean validation accuracy
  after the last epoch;
- each variant (the recipe with one trick on, all of them, or all but one) trains for E epochs with the same seeds;
  when its mean reaches the target, the fewest epochs e <= E at which the mean still reaches it is found by
  bisection over 1..E (each e its own run of e epochs: One Cycle spans the whole run), assuming more epochs never
  hurt;
- the same data (a class-balanced subset, the validation split held out of it), config and seeds for every run;
  validation and test sets are evaluated after the last epoch only.
Reported: per variant, the fewest epochs to the target, the accuracy and training seconds there (mean, min and max
over seeds), and the accuracy after E epochs; a PNG of accuracy against epochs. Every finished run is written to
the JSON as it ends, and ``--resume FILE`` takes the runs of an interrupted benchmark with the same settings.

A script, not library code: it prints, reads argv and exits. Results go to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from benchmarks.machine import cpu_model
from benchmarks.studies import add_scale_args, result_name, scale_overrides, spread
from pipelines.config import Config
from pipelines.data import load_splits
from pipelines.errors import UserError
from pipelines.reuse import RunCache
from pipelines.train import check_data, run
from sweeper.overrides import collect_overrides

SCHEMA = 1
RECIPE = "recipe"

# Each trick alone, as its sources set it (Myrtle.ai part 8 = davidcpage/cifar10-fast bag_of_tricks.ipynb;
# airbench = KellerJordan/cifar10-airbench airbench94.py).
TRICKS: dict[str, dict[str, Any]] = {
    "ghost_batch": {"model.ghost_batch": 32},  # Myrtle: batch-norm statistics per 32 images
    "frozen_bn_scales": {"model.bn_weight": "frozen"},  # Myrtle, airbench: BN scales fixed at 1
    "bn_bias_scales": {"optim.bn_bias_lr_scale": 16.0, "optim.bn_bias_decay_scale": 1 / 16},  # Myrtle: x16, /16
    "celu": {"model.activation": "celu", "model.celu_alpha": 0.075},  # Myrtle, with learned BN scales
    "whiten_patch3": {"model.whiten": "patch3"},  # Myrtle: 3x3 patches whitened
    "ema": {"train.ema": 0.99, "train.ema_every": 5},  # Myrtle: evaluate an EMA of the weights
    "tta_flip": {"train.tta": "flip"},  # Myrtle: the image and its mirror
    "alternating_flip": {"augment.alternating_flip": True},  # airbench: each image mirrored every other epoch
    # not in the default list: the sources' other choices
    "gelu": {"model.activation": "gelu"},  # airbench
    "whiten_patch2": {"model.whiten": "patch2"},  # airbench: 2x2 patches, 24 channels
    "tta_flip_shift": {"train.tta": "flip_shift"},  # airbench: + two 1-pixel shifts
}
DEFAULT_TRICKS = (
    "ghost_batch",
    "frozen_bn_scales",
    "bn_bias_scales",
    "celu",
    "whiten_patch3",
    "ema",
    "tta_flip",
    "alternating_flip",
)
# All together: Myrtle's final combination (CELU's alpha x4 = 0.3 once the scales are frozen at 1, new_dawn.py)
# and airbench's alternating flip.
ALL = {
    **{key: value for name in DEFAULT_TRICKS for key, value in TRICKS[name].items()},
    "model.celu_alpha": 0.3,
}


def variant(name: str) -> dict[str, Any]:
    """A variant's overrides: ``all``, ``all-<trick>`` (all but that one: its keys left at the recipe's), or one
    trick of :data:`TRICKS`. KeyError for another name."""
    if name == "all":
        return ALL
    if name.startswith("all-"):
        left_out = TRICKS[name.removeprefix("all-")]
        return {key: value for key, value in ALL.items() if key not in left_out}
    return TRICKS[name]


def variants(names: list[str]) -> dict[str, dict[str, Any]]:
    """The variants to measure, the recipe first, then ``names`` (see :func:`variant`) in the order given."""
    return {RECIPE: {}, **{name: variant(name) for name in names}}


def fewest_epochs(passes: Callable[[int], bool], epochs: int) -> int | None:
    """The fewest e in 1..epochs with ``passes(e)``, by bisection (``passes`` assumed monotone in e); None when
    ``passes(epochs)`` fails. Calls ``passes(epochs)`` first."""
    if not passes(epochs):
        return None
    lo, hi = 0, epochs  # passes(hi); 0 epochs never reaches anything
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


class Bench:
    """The runs of one benchmark: (variant, epochs) -> one record per seed, written to ``path`` as they end."""

    def __init__(self, base: Config, splits: Any, *, seeds: int, path: Path, record: dict[str, Any]) -> None:
        self.base, self.splits, self.seeds, self.path, self.record = base, splits, seeds, path, record
        self.cache = RunCache()  # the data uploaded (and the whitening fitted) once

    def runs(self, variant: str, overrides: dict[str, Any], epochs: int) -> list[dict[str, Any]]:
        """K seeded runs of ``variant`` for ``epochs`` epochs (those already in the record are not run again)."""
        key = f"{variant}/{epochs}"
        done = self.record["runs"].setdefault(key, [])
        for seed in range(len(done), self.seeds):
            config = self.base.with_overrides(
                {**overrides, "train.epochs": epochs, "train.eval_every": epochs, "train.seed": seed}
            )
            result = run(config, splits=self.splits, cache=self.cache, write_outputs=False, checked=True)
            last = result.history[-1]
            done.append(
                {
                    "seed": seed,
                    "status": result.status,
                    "val": last.val_accuracy if result.status != "diverged" else 0.0,
                    "test": last.test_accuracy if result.status != "diverged" else 0.0,
                    "train_seconds": round(result.seconds, 2),
                }
            )
            print(f"  {key} seed {seed}: val {done[-1]['val']:.4f} in {result.seconds:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            self.save()
        return done

    def mean_val(self, variant: str, overrides: dict[str, Any], epochs: int) -> float:
        return statistics.fmean(r["val"] for r in self.runs(variant, overrides, epochs))

    def save(self) -> None:
        self.path.write_text(json.dumps(self.record, indent=2, default=float))


def summarize(record: dict[str, Any], epochs: int) -> dict[str, dict[str, Any]]:
    """Per variant: the fewest epochs to the target, the accuracy and seconds there, the accuracy after E."""
    table = {}
    for variant in record["variants"]:
        fewest = record["fewest"].get(variant)
        at = fewest if fewest is not None else epochs
        runs = record["runs"][f"{variant}/{at}"]
        full = record["runs"][f"{variant}/{epochs}"]
        table[variant] = {
            "epochs_to_target": fewest,
            "val": spread([r["val"] for r in runs]),
            "test": spread([r["test"] for r in runs]),
            "train_seconds": spread([r["train_seconds"] for r in runs]),
            "val_at_E": spread([r["val"] for r in full]),
            "epochs_tried": sorted(int(k.split("/")[1]) for k in record["runs"] if k.split("/")[0] == variant),
        }
    return table


def format_table(table: dict[str, dict[str, Any]], *, epochs: int, target: float) -> str:
    lines = [
        f"target: the recipe's mean validation accuracy after {epochs} epochs, {100 * target:.2f}%",
        f"{'variant':<18} {'epochs':>7} {'val % there':>20} {'train s there':>20} {'val % after E':>20}",
    ]
    for variant, row in table.items():
        fewest = row["epochs_to_target"]
        cell = f"{epochs} (E)" if variant == RECIPE else ("> E" if fewest is None else str(fewest))

        lines.append(
            f"{variant:<18} {cell:>7} {_cell(row['val']):>20} {_cell(row['train_seconds'], scale=1, digits=1):>20} "
            f"{_cell(row['val_at_E']):>20}"
        )
    return "\n".join(lines)


def _cell(values: dict[str, float], *, scale: float = 100, digits: int = 2) -> str:
    """mean (min-max), scaled (100: as a percentage)."""
    mean, low, high = (scale * values[k] for k in ("mean", "min", "max"))
    return f"{mean:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def plot(record: dict[str, Any], table: dict[str, dict[str, Any]], path: Path, *, title: str) -> Path:
    """Left: mean validation accuracy (min-max bars) at each epoch count tried, per variant, and the target;
    right: the fewest epochs to the target."""
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained", width_ratios=(3, 2))
    colors = plt.get_cmap("tab20").colors
    for i, variant in enumerate(table):
        xs = table[variant]["epochs_tried"]
        rows = [[r["val"] * 100 for r in record["runs"][f"{variant}/{e}"]] for e in xs]
        means = [statistics.fmean(v) for v in rows]
        err = [
            [m - min(v) for m, v in zip(means, rows, strict=True)],
            [max(v) - m for m, v in zip(means, rows, strict=True)],
        ]
        style = {"lw": 2.4, "color": "black"} if variant == RECIPE else {"lw": 1.2, "color": colors[i % len(colors)]}
        ax.errorbar(xs, means, yerr=err, marker="o", ms=4, capsize=2, label=variant, **style)
    ax.axhline(record["target"] * 100, color="black", ls="--", lw=1, label="target")
    ax.set(xlabel="epochs (each its own One Cycle run)", ylabel="validation accuracy (%)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    names = list(table)
    values = [table[v]["epochs_to_target"] for v in names]
    epochs = record["protocol"]["epochs"]
    shown = [v if v is not None else epochs + 0.5 for v in values]
    bars.barh(names, shown, color=["black" if n == RECIPE else "tab:blue" for n in names])
    for y, v in enumerate(values):
        bars.text(shown[y] + 0.1, y, "> E" if v is None else str(v), va="center", fontsize=8)
    bars.invert_yaxis()
    bars.set(xlabel="fewest epochs to the target", xlim=(0, epochs + 1.5))
    bars.grid(alpha=0.3, axis="x")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scale_args(parser, train_limit=3000, val_size=1000, width=0.25, batch_size=128)
    parser.add_argument("--epochs", type=int, default=4, help="E: the recipe's epochs, whose accuracy is the target")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..K-1 per run (K)")
    known = ", ".join(TRICKS)
    parser.add_argument("--tricks", default=",".join(("all", "all-ema", *DEFAULT_TRICKS)),
                        help=f"variants besides the recipe: all, all-<trick> (all but one), or {known}")  # fmt: skip
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--resume", type=Path, default=None, help="an interrupted run's JSON: keep its runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = [n for n in args.tricks.split(",") if n]
    unknown = [n for n in names if n not in ("all", *TRICKS, *(f"all-{t}" for t in TRICKS))]
    overrides = scale_overrides(args, epochs=args.epochs)
    try:
        if unknown:
            raise UserError(f"unknown trick {unknown[0]!r}; known: all, all-<trick> and {', '.join(TRICKS)}")
        base = Config().with_overrides(collect_overrides(args.set, extra=overrides))
        splits = load_splits(base.data)
        for overrides_ in variants(names).values():  # every variant's config, checked before anything trains
            check_data(base.with_overrides(overrides_), splits)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    name, stamp = result_name("tricks")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else cpu_model()
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "date": stamp.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.tricks " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "device": {"name": device, "threads": torch.get_num_threads(), **versions},
        "protocol": {
            "epochs": args.epochs,
            "seeds": args.seeds,
            "target": "the recipe's mean validation accuracy after E epochs",
            "search": "bisection over 1..E of the fewest epochs whose mean validation accuracy reaches the target",
            "evaluation": "validation and test sets after the last epoch only",
        },
        "config": base.to_dict(),
        "data": {
            "source": splits.source,
            "train": len(splits.train),
            "val": len(splits.val or ()),
            "test": len(splits.test),
        },
        "variants": variants(names),
        "runs": {},
        "fewest": {},
        "complete": False,
    }
    if args.resume is not None:
        previous = json.loads(args.resume.read_text())
        if previous["config"] != record["config"] or previous["protocol"] != record["protocol"]:
            print(f"error: {args.resume} was run with other settings", file=sys.stderr)
            return 2
        record["runs"] = previous["runs"]
        record["seconds_before_resume"] = previous.get("seconds", 0) + previous.get("seconds_before_resume", 0)
    bench = Bench(base, splits, seeds=args.seeds, path=args.out_dir / f"{name}.json", record=record)
    record["target"] = target = bench.mean_val(RECIPE, {}, args.epochs)
    record["fewest"][RECIPE] = args.epochs
    for variant, trick in record["variants"].items():
        if variant == RECIPE:
            continue
        record["fewest"][variant] = fewest_epochs(lambda e, v=variant, t=trick: bench.mean_val(v, t, e) >= target,
                                                  args.epochs)  # fmt: skip
        bench.save()
    table = summarize(record, args.epochs)
    title = f"tricks: width {args.width:g}, {len(splits.train)} images, batch {args.batch_size}, K {args.seeds}"
    png = plot(record, table, args.out_dir / f"{name}.png", title=title)
    record.update(table=table, plot=str(png), complete=True, seconds=round(time.perf_counter() - started, 1))
    bench.save()
    print(format_table(table, epochs=args.epochs, target=target))
    print(f"wrote {bench.path} and {png} in {record['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
