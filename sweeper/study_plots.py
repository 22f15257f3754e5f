"""The study's own figures (Optuna's matplotlib backend): history, importances, accuracy over each parameter."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def write_study_plots(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """optimization_history.png, accuracy_vs_params.png (the objective over each searched parameter, one panel
    each) and, from 2 complete trials on, param_importances.png; a plot Optuna cannot draw is skipped."""
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    written: dict[str, Path] = {}
    plots = {"optimization_history.png": ovm.plot_optimization_history, "accuracy_vs_params.png": ovm.plot_slice}
    if len(complete) >= 2 and any(t.params for t in complete):
        plots["param_importances.png"] = ovm.plot_param_importances
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib backend is marked experimental
            try:
                ax = draw(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                log.warning("skipped %s: %s", name, err)
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # slice plots' colour bars trip tight_layout's check, harmlessly
            fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written[name] = path
    return written
