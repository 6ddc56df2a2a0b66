"""label-refinery: train image classifiers with the Label Refinery (Bagherinezhad et al., 2018).

Generation 1 trains on ground truth; generation k+1 trains from scratch on the softmax that a frozen
refinery (generation k, or any trained model) gives to the very same random crop the student sees.

Example:
    >>> from label_refinery import load_config, run_chain
    >>> cfg = load_config(overrides={"data.dataset": "digits", "optim.epochs": 3, "chain.generations": 2})
    >>> rows = run_chain(cfg, "runs/digits-chain")                                   # doctest: +SKIP
"""

from ._version import __version__
from .checkpoint import load_checkpoint
from .config import Config, load_config
from .errors import UserError
from .training.chain import run_chain
from .training.generation import train_generation

__all__ = ["__version__", "Config", "UserError", "load_checkpoint", "load_config", "run_chain", "train_generation"]
