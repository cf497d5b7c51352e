"""DomainBed's import path for datasets: ``DATASETS``, ``get_dataset_class``, ``num_environments``
and the dataset classes (see ``domainbed.data``)."""

from .data.registry import *  # noqa: F401,F403
from .data.registry import __all__  # noqa: F401
