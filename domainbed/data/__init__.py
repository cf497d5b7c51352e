"""Data: per-environment datasets, transforms, splits, loaders and downloads.

Dataset classes live in ``digits``, ``mnist``, ``image_folders`` and ``wilds_datasets``; the
public registry (DomainBed's import path) is :mod:`domainbed.datasets`.
"""
