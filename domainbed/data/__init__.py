"""Data: dataset names (``catalog``, torch-free), per-environment datasets (``digits``, ``mnist``,
``image_folders``, ``wilds_datasets``), their ``registry`` (DomainBed's ``domainbed.datasets``),
transforms, splits, loaders and ``download``."""
