"""The harm report a researcher reads: per kind of move the shares harmful / neutral /
helpful by attribution and by forked counterfactual, with 95% Wilson intervals; harm
per 1,000 requests; how often the two methods agree on the sign; and which features of
a move go with harm (slack, stall, kind, load), as a table and a plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

VERDICTS = ("harmful", "neutral", "helpful")
Z = 1.959963984540054


def wilson(hits: int, n: int) -> tuple[float | None, float | None]:
    """The 95% Wilson score interval of a share `hits / n`."""
    if n == 0:
        return None, None
    p = hits / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * np.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def shares(verdicts: pd.Series) -> dict:
    judged = verdicts[verdicts.isin(VERDICTS)]
    out = {"judged": int(len(judged))}
    for verdict in VERDICTS:
        hits = int((judged == verdict).sum())
        low, high = wilson(hits, len(judged))
        out[verdict] = {"count": hits, "share": hits / len(judged) if len(judged) else None, "ci95": [low, high]}
    return out


def agreement(part: pd.DataFrame) -> dict:
    both = part[part["verdict"].isin(VERDICTS) & part["attributed_verdict"].isin(VERDICTS)]
    same = int((np.sign(both["fork_change"].round(9)) == np.sign(both["attributed_change"].round(9))).sum()) \
        if len(both) else 0
    low, high = wilson(same, len(both))
    return {"compared": int(len(both)), "same_sign": same, "share": same / len(both) if len(both) else None,
            "ci95": [low, high], "same_verdict": int((both["verdict"] == both["attributed_verdict"]).sum())}


def per_thousand(count: int, requests: int) -> dict:
    """Harmful moves per 1,000 requests, with the Wilson interval of count / requests."""
    low, high = wilson(min(count, requests), requests)
    scale = 1000.0
    return {"value": scale * count / requests if requests else None,
            "ci95": [None if low is None else scale * low, None if high is None else scale * high]}


def summary(table: pd.DataFrame, requests: int) -> dict:
    """Per kind and mode of move (and the policy's rule that made it, where it says):
    shares by both methods, agreement, harm per 1,000 requests, idle and stall."""
    out = {}
    rules = table["rule"] if "rule" in table else pd.Series("", index=table.index)
    for (kind, mode, rule), part in table.groupby([table["kind"], table["mode"], rules.fillna("")], sort=True):
        harmful = int((part["attributed_verdict"] == "harmful").sum())
        out[f"{kind} {mode}" + (f" ({rule})" if rule else "")] = {
            "count": int(len(part)),
            "attributed": shares(part["attributed_verdict"]),
            "forked": shares(part["verdict"]),
            "agreement": agreement(part),
            "harmful_per_1000_requests": per_thousand(harmful, requests),
            "visible_idle_s": float(part["visible_idle_s"].sum()),
            "with_visible_idle": int((part["visible_idle_s"] > 0).sum()),
            "mean_stall_s": float(part["stall_s"].mean()) if part["stall_s"].notna().any() else None,
            "collateral_mean": float(part["collateral"].mean()) if part["collateral"].notna().any() else None,
            "fork_change_mean": float(part["fork_change"].mean()) if part["fork_change"].notna().any() else None,
        }
    return out


FEATURES = {
    "slack_s": [0, 1e-9, 0.5, 2, np.inf],
    "stall_s": [0, 0.05, 0.5, 2, np.inf],
    "load": [0, 8, 32, 128, np.inf],
}


def features(table: pd.DataFrame) -> pd.DataFrame:
    """Harmful share (by attribution) per bin of each feature and per kind."""
    moves = table[table["attributed_verdict"].isin(VERDICTS)]
    rows = []
    for feature, edges in FEATURES.items():
        bins = pd.cut(moves[feature], edges, right=False, include_lowest=True)
        for interval, part in moves.groupby(bins, observed=True):
            rows.append(_row(feature, str(interval), part))
    for kind, part in moves.groupby(moves["kind"] + " " + moves["mode"]):
        rows.append(_row("kind", kind, part))
    if "rule" in moves:
        for rule, part in moves[moves["rule"].fillna("") != ""].groupby("rule"):
            rows.append(_row("rule", rule, part))
    return pd.DataFrame(rows, columns=["feature", "bin", "moves", "harmful", "share", "ci_low", "ci_high"])


def _row(feature: str, label: str, part: pd.DataFrame) -> dict:
    hits = int((part["attributed_verdict"] == "harmful").sum())
    low, high = wilson(hits, len(part))
    return {"feature": feature, "bin": label, "moves": int(len(part)), "harmful": hits,
            "share": hits / len(part) if len(part) else np.nan, "ci_low": low, "ci_high": high}


def plot(table: pd.DataFrame, path: Path) -> Path | None:
    """Harmful share against each feature's bins, with intervals."""
    frame = features(table)
    frame = frame[frame["feature"].isin(list(FEATURES))]
    if not len(frame):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(FEATURES)
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), sharey=True)
    for axis, name in zip(axes, names):
        part = frame[frame["feature"] == name]
        x = np.arange(len(part))
        share = part["share"].to_numpy(dtype=float)
        error = np.maximum([share - part["ci_low"].to_numpy(dtype=float),
                            part["ci_high"].to_numpy(dtype=float) - share], 0.0)
        axis.errorbar(x, share, yerr=error, fmt="o", capsize=3)
        axis.set_xticks(x, [f"{b}\n(n={n})" for b, n in zip(part["bin"], part["moves"])], fontsize=7)
        axis.set_title(name)
        axis.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("harmful share (attribution)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
