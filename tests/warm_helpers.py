"""Watch the propensity logit's warm starts (``kernels.sample_logit``) in a kernel module."""
from __future__ import annotations


def record_warm_starts(monkeypatch, module) -> list:
    """Wrap ``module.sample_logit``; the returned list collects, per fit, the cells it warm-starts."""
    starts: list = []
    real = module.sample_logit

    def spy(*args, **kwargs):
        gamma, good = real(*args, **kwargs)
        starts.append(good)
        return gamma, good

    monkeypatch.setattr(module, "sample_logit", spy)
    return starts
