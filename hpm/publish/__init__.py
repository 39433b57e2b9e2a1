"""From evaluation reports to what people read: checkpoint metrics and cards, README and docs tables and plots.

- :mod:`.metrics`  reports -> ``config.json`` metrics, protocol names and lines
- :mod:`.compare`  table rows, paired exact McNemar tests, per-sample worst cases, what APGD-CE alone missed
- :mod:`.cards`    ``hpm card``: metrics recorded in a checkpoint, its model card rewritten
- :mod:`.readme`   README's headline and docs/results.md, generated from ``results/manifest.json``
- :mod:`.sweeps`   robustness-vs-eps plots of sweep reports
- :mod:`.backbones` HPM - FC on every robust backbone: paired intervals, the table, its plot and findings
- :mod:`.declared` a defence evaluated declared per-sample and declared batch-dependent: its table and findings
- :mod:`.figures`  a results figure written by a publishing script (HTML that needs no committed plotly.js, PNG)
"""
