"""Experiments: arms (chains) over seeds, resumable, and their tables with paired 95 % intervals.

- ``experiment``: the experiment file, running its arms, and the results tables;
- ``stats``: means, standard deviations and t intervals.
"""
