"""DomainBed's import path for hyperparameters (see ``domainbed.hparams``)."""

from .hparams.registry import *  # noqa: F401,F403
from .hparams.registry import __all__  # noqa: F401
