"""Experiments: arms (chains) over seeds, resumable, and their tables with paired 95 % intervals.

- ``spec``: the experiment file (its format is documented there), its arms and references;
- ``run``: running the arms over the seeds, in stages, and the ensemble ceilings;
- ``tables``: the results rows and tables (``results.md``, ``results.json``);
- ``stats``: means, standard deviations and t intervals.
"""
