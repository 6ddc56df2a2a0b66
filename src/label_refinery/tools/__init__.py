"""Tools that read a finished run folder: they never train, except the audit's held-out folds.

- ``probe``: a run's generations, their checkpoints and data, fixed analysis views;
- ``analysis`` (pure functions) and ``analyze``: label statistics per generation (analysis.json);
- ``quality``, ``audit``, ``folds``, ``relabel``: which labels look wrong, held-out scores, fixes;
- ``export``: refined labels per image as CSV, npz or Parquet;
- ``reports``: markdown and HTML pages with plots, from the run folder's files.
"""
