"""Plots of runs, written as PNG and SVG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.runformat import Run  # noqa: E402
from router.slo import SLO  # noqa: E402


def _save(figure, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".svg"):
        target = path.with_suffix(suffix)
        figure.savefig(target, dpi=120, bbox_inches="tight")
        written.append(target)
    plt.close(figure)
    return written


def token_timelines(runs: dict[str, Run], request_ids: list, slo: SLO, path: Path) -> list[Path]:
    """Tokens received against time since arrival, one panel per request, with the
    `smooth` deadline line `L + V*i` (as the paper's figures 5 to 8)."""
    figure, axes = plt.subplots(1, len(request_ids), figsize=(4.5 * len(request_ids), 3.6), squeeze=False)
    for axis, request_id in zip(axes[0], request_ids):
        longest = 0
        for label, run in runs.items():
            arrival = float(run.requests.loc[run.requests["request_id"] == request_id, "arrival_s"].iloc[0])
            times = run.tokens.loc[run.tokens["request_id"] == request_id, "time_s"].to_numpy() - arrival
            axis.step(times, np.arange(1, len(times) + 1), where="post", label=label)
            longest = max(longest, len(times))
        index = np.arange(1, longest + 1)
        axis.plot(slo.l + slo.v * index, index, "k--", linewidth=1, label=f"deadline L + V*i")
        axis.set_title(f"request {request_id}")
        axis.set_xlabel("seconds since arrival")
        axis.set_ylabel("tokens received")
    axes[0][0].legend(fontsize=8)
    return _save(figure, path)
