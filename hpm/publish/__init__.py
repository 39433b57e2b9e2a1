"""From evaluation reports to what people read: checkpoint metrics and cards, README tables and plots.

- :mod:`.metrics`  reports -> ``config.json`` metrics (``hpm card``), protocol names and lines
- :mod:`.compare`  table rows, paired exact McNemar tests, what APGD-CE alone missed
- :mod:`.readme`   the README results section, generated from ``results/manifest.json``
- :mod:`.sweeps`   robustness-vs-eps plots of sweep reports
"""
