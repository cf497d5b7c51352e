"""Shared test settings: small, offline, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402

# Tiny-run settings for end-to-end tests on the embedded digits data.
TINY_HPARAMS = '{"batch_size": 16}'


@pytest.fixture
def tiny_train_args(tmp_path):
    """Flags of a run that takes a couple of seconds on CPU."""
    return ["--dataset", "RotatedDigits", "--algorithm", "ERM", "--test_envs", "0",
            "--steps", "6", "--checkpoint_freq", "3", "--hparams", TINY_HPARAMS,
            "--output_dir", str(tmp_path / "run")]
