"""DomainBed's import path for model selection (see ``domainbed.results.selection``)."""

from .results.selection import *  # noqa: F401,F403
from .results.selection import __all__  # noqa: F401
