"""Intervals of estimates that are not counts (a count's rate gets Wilson's:
:func:`audit.results.wilson_interval`). A metric row with such an interval carries
``ci_low``/``ci_high`` without ``n`` (``Metric.has_interval`` but not ``is_rate``)."""
from __future__ import annotations

__all__ = ["bootstrap_mean_interval"]


def bootstrap_mean_interval(values, *, seed: int = 0, confidence: float = 0.95,
                            resamples: int = 1000) -> tuple[float | None, float | None]:
    """The ``confidence`` percentile bootstrap interval of the mean of ``values`` (a 1-D
    sequence of floats, e.g. one score per image), by ``scipy.stats.bootstrap`` with a
    generator seeded from ``seed``: (low, high); (None, None) for fewer than 2 values, the
    value twice when they are all equal."""
    import numpy as np

    v = np.asarray(list(values), dtype=np.float64)
    if len(v) < 2:
        return None, None
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    from scipy.stats import bootstrap

    ci = bootstrap((v,), np.mean, n_resamples=resamples, method="percentile", confidence_level=confidence,
                   random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)
