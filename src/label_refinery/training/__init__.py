"""Training: one generation (``generation``), chains of them (``chain``), and what they are made of.

- ``engine``: one training epoch (the step, top to bottom) and evaluation, as metric dicts;
- ``build``: a generation's label source and step (loss, batch transforms) from its config;
- ``jitter``: adversarial jittering, a batch transform before labelling;
- ``state``: the exact-resume state of an unfinished generation;
- ``runfolder``: the files of a generation folder (config comparison, metrics, meta.json);
- ``generation`` / ``chain``: train one generation into a folder / a chain of generations.

Training never imports the tools that read a finished run (``tools/``), ``study/`` or ``cli/``.
"""
