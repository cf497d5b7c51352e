"""DomainBed's ``domainbed.lib`` import paths, for notebooks and scripts written against DomainBed.

``reporting`` (``load_records``, ``get_grouped_records``) and ``query`` (``Q``) import neither torch
nor timm, as DomainBed's reporting notebooks expect; ``misc`` keeps its torch-using helpers lazy.
"""
