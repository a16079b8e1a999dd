"""One scoring path: a set of metrics built once (their networks loaded once) that scores videos one by one.

``vidiff-score`` scores files with it; the benchmark runner (``vidiff-eval``) scores every table row with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from vidiff.evaluation.metrics import MetricWeights, VideoMetric, build_metrics


class Scorer:
    """``build_metrics(names, ...)`` once; :meth:`score` each video; :meth:`values` / :meth:`skips` at the end;
    :meth:`reset` before the next set (e.g. the next table row)."""

    def __init__(
        self, names: Iterable[str], weights: MetricWeights | None = None, device: str = "cpu", options: Mapping = ()
    ):
        self.metrics: dict[str, VideoMetric] = build_metrics(list(names), weights, device, **dict(options))

    def reset(self) -> Scorer:
        for metric in self.metrics.values():
            metric.reset()
        return self

    @property
    def needs_target(self) -> list[str]:
        return [m.name for m in self.metrics.values() if m.info.needs_target]

    def score(self, pred: np.ndarray, target: np.ndarray | None, instruction: str | None = None) -> dict[str, float]:
        """Score one video (uint8 ``[f, h, w, 3]``); returns its value per metric."""
        return {
            m.name: m.update(pred, target if m.info.needs_target else None, instruction) for m in self.metrics.values()
        }

    def values(self) -> dict[str, float]:
        """The mean of every metric over the videos scored since the last reset (NaN where none could be)."""
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            out.update(metric.compute())
        return out

    def skips(self) -> dict[str, dict[str, int]]:
        """``{metric: {reason: count}}`` of videos a metric could not score."""
        return {m.name: dict(m.skips.reasons) for m in self.metrics.values() if m.skips.count}
