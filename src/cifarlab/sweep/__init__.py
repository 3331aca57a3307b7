"""``cifarlab sweep``: search training settings with Optuna (the extra ``cifarlab[sweep]``).

- :mod:`cifarlab.sweep.space`: the search space, read from a TOML file (fixed settings at the
  top, ``[space.FIELD]`` tables for the searched ones); no Optuna needed to read or check it.
- :mod:`cifarlab.sweep.study`: the study (Optuna's TPE sampler, a median pruner fed by each
  epoch's validation accuracy, SQLite in the sweep folder or any database Optuna's RDB storage
  takes), the trials (each a normal run folder), resume and workers that join.
- :mod:`cifarlab.sweep.output`: the table of trials, ``trials.csv``, ``best.toml`` and
  ``sweep.html``.

Nothing here imports Optuna until a sweep runs: ``import cifarlab`` and ``cifarlab --help``
work without it.
"""
