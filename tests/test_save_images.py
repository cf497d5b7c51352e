"""DomainBed's save_images script: sample images of every environment, named as DomainBed names them."""

import re

import numpy as np
import pytest
from matplotlib.image import imread

from domainbed.data.registry import get_dataset_class
from domainbed.scripts import save_images


def test_saves_n_images_per_environment_and_each_is_the_named_item(tmp_path, capsys):
    paths = save_images.main(["--datasets", "RotatedDigits", "PACS", "--n_images", "3",
                              "--data_dir", str(tmp_path / "nodata"), "--output_dir", str(tmp_path / "out")])
    assert "skipped PACS: PACS not found" in capsys.readouterr().err  # missing data is named, not fatal
    dataset = get_dataset_class("RotatedDigits")("", [], {})
    assert len(paths) == 3 * len(dataset)
    for path in paths:
        match = re.fullmatch(r"RotatedDigits_env(\d)(\d+)_(\d)_idx(\d+)_class(\d)\.png", path.name)
        env, angle, _, index, label = map(int, match.groups())
        assert dataset.ENVIRONMENTS[env] == str(angle)
        image, expected_label = dataset[env][index]
        assert label == expected_label
        # the saved pixels are that item (1 channel shown as grey)
        np.testing.assert_allclose(imread(path)[..., 0], image[0].numpy(), atol=1 / 255)


def test_nothing_to_save_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no dataset found under .*nodata.*--datasets RotatedDigits"):
        save_images.main(["--datasets", "PACS", "--data_dir", str(tmp_path / "nodata"),
                          "--output_dir", str(tmp_path / "out")])
