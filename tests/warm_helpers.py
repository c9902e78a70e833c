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


def record_passes(monkeypatch) -> list:
    """Wrap ``graph.attgt._exact_sum``; the returned list collects the names of att_gt's passes
    (``stats``, ``logit``, ``moments``) in order."""
    from dte_dask.graph import attgt

    names: list = []
    real = attgt._exact_sum

    def spy(panel, func, *args, name):
        names.append(name.removeprefix("attgt-"))
        return real(panel, func, *args, name=name)

    monkeypatch.setattr(attgt, "_exact_sum", spy)
    return names
