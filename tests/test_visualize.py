"""Attention maps, expert maps and expert usage: the numbers they draw and the files they write."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import domainbed.models  # noqa: F401  (registers vit_micro_patch4_32 with timm, for timm.create_model below)
from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.checkpoints import load_checkpoint, save_model
from domainbed.data.transforms import image_eval_transform
from domainbed.datasets import get_dataset_class
from domainbed.scripts import vis_attention, vis_experts
from domainbed.visualize.attention import (attention_figure, attention_input, attention_mass_mask,
                                           attention_weights, cls_attention, save_attention_maps)
from domainbed.visualize.experts import expert_colours, expert_figure, expert_maps, save_expert_maps
from domainbed.visualize.inputs import InputSpec, load_image_files, prepare_tensors, to_display
from domainbed.visualize.usage import count_by_group, row_shares

MICRO_HEADS, MICRO_GRID = 4, 8  # vit/gmoe_micro_patch4_32: 4 heads, 32 px / patch 4


def _saved_algorithm(tmp_path_factory, algorithm_name: str, update_steps: int):
    """A model.pkl as training writes it, after a few ERM/SF-MoE steps on RotatedDigits (batch 8 per
    training env). Built in-process rather than with scripts/train (whose per-checkpoint evaluation of
    all 1,797 images costs tens of seconds); test_checkpoints covers train -> model.pkl."""
    torch.manual_seed(0)
    hparams = hparams_registry.default_hparams(algorithm_name, "RotatedDigits")
    dataset = get_dataset_class("RotatedDigits")("", [0], hparams)
    algorithm = get_algorithm_class(algorithm_name)(dataset.input_shape, dataset.num_classes, 5, hparams)
    for step in range(update_steps):
        algorithm.update([(env.images[8 * step:8 * step + 8], env.labels[8 * step:8 * step + 8])
                          for env in list(dataset)[1:]])
    path = tmp_path_factory.mktemp("vis") / f"{algorithm_name}.pkl"
    save_model(path, algorithm, {"dataset": "RotatedDigits", "algorithm": algorithm_name, "test_envs": [0]})
    return path


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory):
    return _saved_algorithm(tmp_path_factory, "SFMOE", update_steps=3)


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    """The dense path: an (untrained) ERM ViT."""
    return _saved_algorithm(tmp_path_factory, "ERM", update_steps=0)


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """Three 32x32 grayscale PNGs of held-out digits."""
    folder = tmp_path_factory.mktemp("pngs")
    env = get_dataset_class("RotatedDigits")("", [0])[1]
    paths = []
    for i in range(3):
        x, _ = env[i]
        path = folder / f"digit{i}.png"
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------ attention numbers
@pytest.mark.parametrize("qk_norm,reg_tokens", [(False, 0), (True, 2)])
def test_recomputed_attention_equals_timms_unfused_attention(qk_norm, reg_tokens):
    torch.manual_seed(0)
    fused = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=3, qk_norm=qk_norm,
        reg_tokens=reg_tokens).eval()
    if qk_norm:  # non-trivial norms so a skipped q_norm/k_norm would show
        for norm in (fused.blocks[-1].attn.q_norm, fused.blocks[-1].attn.k_norm):
            torch.nn.init.normal_(norm.weight, 1.0, 0.5)
            torch.nn.init.normal_(norm.bias, 0.0, 0.5)
    unfused = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=3, qk_norm=qk_norm,
        reg_tokens=reg_tokens).eval()
    unfused.load_state_dict(fused.state_dict())
    for block in unfused.blocks:
        block.attn.fused_attn = False
    x = torch.randn(2, 3, 16, 16)

    # Reference 1: timm's own explicit softmax, as it enters attn_drop.
    seen = []
    handle = unfused.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        unfused(x)
    handle.remove()
    timm_weights = seen[0]  # [B, heads, N, N]
    # Reference 2: by hand from the block's input tokens.
    attn = unfused.blocks[-1].attn
    tokens = attention_input(unfused, x)
    q, k, _ = attn.qkv(tokens).reshape(2, tokens.shape[1], 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    manual = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / 8 ** 0.5, dim=-1)

    assert fused.blocks[-1].attn.fused_attn  # the model we visualise keeps fused attention
    ours = attention_weights(fused.blocks[-1].attn, attention_input(fused, x))
    torch.testing.assert_close(ours, timm_weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours, manual.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.sum(-1), torch.ones(2, 4, tokens.shape[1]))

    maps = cls_attention(fused, x)
    prefix = 1 + reg_tokens
    assert maps.shape == (2, 4, 4, 4)
    torch.testing.assert_close(maps, timm_weights[:, :, 0, prefix:].reshape(2, 4, 4, 4), atol=1e-6, rtol=1e-5)
    # What the CLS token does not pay to patches, it pays to prefix tokens.
    torch.testing.assert_close(maps.sum((-2, -1)) + timm_weights[:, :, 0, :prefix].sum(-1), torch.ones(2, 4))
    assert fused.blocks[-1].attn.fused_attn and not fused._forward_pre_hooks and \
        not fused.blocks[-1].attn._forward_pre_hooks


def test_block_choice_and_bad_block():
    torch.manual_seed(0)
    model = timm.create_model("vit_micro_patch4_32", num_classes=2, in_chans=1).eval()
    x = torch.rand(1, 1, 32, 32)
    assert not torch.allclose(cls_attention(model, x, block=0), cls_attention(model, x, block=-1))
    torch.testing.assert_close(cls_attention(model, x, block=5), cls_attention(model, x, block=-1))
    with pytest.raises(ValueError, match="block 6 out of range for a ViT with 6 blocks"):
        cls_attention(model, x, block=6)
    with pytest.raises(ValueError, match="needs a ViT|no transformer blocks"):
        cls_attention(timm.create_model("resnet18", num_classes=2), torch.rand(1, 3, 32, 32))


def test_mass_mask_hand_example():
    attn = torch.tensor([[0.5, 0.25], [0.125, 0.125]])  # exact in binary: no rounding at the boundaries
    assert attention_mass_mask(attn, 0.6).tolist() == [[True, True], [False, False]]
    assert attention_mass_mask(attn, 0.5).tolist() == [[True, False], [False, False]]  # 0.5 alone is enough
    assert attention_mass_mask(attn, 0.75).tolist() == [[True, True], [False, False]]
    assert attention_mass_mask(attn, 0.8).sum() == 3
    assert attention_mass_mask(attn, 1.0).all()
    assert attention_mass_mask(4 * attn, 0.6).tolist() == [[True, True], [False, False]]  # relative mass
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="threshold must be in"):
            attention_mass_mask(attn, bad)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_mass_mask_is_the_smallest_set_over_threshold(threshold):
    maps = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)) ** 4
    masks = attention_mass_mask(maps, threshold)
    assert masks.shape == maps.shape and masks.dtype == torch.bool
    share = (maps / maps.sum((-2, -1), keepdim=True)).double()
    for m, s in zip(masks.reshape(-1, 64), share.reshape(-1, 64)):
        kept = s[m]
        assert kept.sum() >= threshold
        assert kept.sum() - kept.min() < threshold
        assert (s[~m].max() if (~m).any() else -1) <= kept.min()  # the kept ones are the strongest


# ------------------------------------------------------------------------------------ attention files
def test_attention_figure_has_input_mean_and_one_panel_per_head():
    image = np.zeros((32, 32, 3))
    for heads in (4, 6):
        attn = torch.rand(heads, 8, 8)
        figure = attention_figure(image, attn, attention_mass_mask(attn, 0.6),
                                  attention_mass_mask(attn.mean(0), 0.6), threshold=0.6)
        assert len(figure.axes) == 2 + heads + 1  # the panels, then the colour bar
        assert [ax.get_title() for ax in figure.axes][2:2 + heads] == [
            f"head {h} ({int(attention_mass_mask(attn[h], 0.6).sum())} patches)" for h in range(heads)]


def test_attention_figure_has_one_colour_bar_for_every_map():
    heads = 4
    attn = torch.rand(heads, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.05
    attn[2, 3, 4] = 0.2  # the largest weight of any map: the top of the shared scale
    figure = attention_figure(np.zeros((32, 32, 3)), attn, attention_mass_mask(attn, 0.6),
                              attention_mass_mask(attn.mean(0), 0.6))
    panels, cax = figure.axes[:-1], figure.axes[-1]
    heat = [ax.get_images()[1] for ax in panels[1:]]  # over the picture: the mean, then each head
    assert len(heat) == 1 + heads
    bars = {id(image.colorbar): image.colorbar for image in heat if image.colorbar is not None}
    assert len(bars) == 1  # one colour bar, drawn from a heat map, in the last axes
    (bar,) = bars.values()
    assert bar.ax is cax and cax.get_ylabel() == "CLS attention weight per patch"
    assert bar.mappable.get_cmap().name == "inferno"
    # every map on the bar's scale: 0 to the largest weight, so a colour reads the same in every panel
    for image in heat:
        assert image.get_clim() == pytest.approx((0.0, 0.2))
    assert (bar.vmin, bar.vmax) == pytest.approx((0.0, 0.2))
    # the heat maps are the attention, upsampled (each patch a 4x4 block): head 2's peak at patch (3, 4)
    np.testing.assert_allclose(heat[1 + 2].get_array()[12:16, 16:20], 0.2)
    np.testing.assert_allclose(heat[0].get_array()[::4, ::4], attn.mean(0).numpy(), rtol=1e-6)
    # the bar sits right of every panel, inside the figure
    bar_box = cax.get_position()
    assert all(ax.get_position().x1 < bar_box.x0 for ax in panels) and bar_box.x1 < 1


@pytest.mark.parametrize("which", ["moe", "dense"])
def test_vis_attention_command_writes_one_grid_per_image(which, moe_checkpoint, dense_checkpoint, digit_pngs,
                                                         tmp_path):
    checkpoint = moe_checkpoint if which == "moe" else dense_checkpoint
    paths = vis_attention.main(["--checkpoint", str(checkpoint), "--images", *map(str, digit_pngs),
                                "--output_dir", str(tmp_path), "--threshold", "0.5"])
    assert [p.name for p in paths] == ["digit0_attention.png", "digit1_attention.png", "digit2_attention.png"]
    assert sorted(tmp_path.iterdir()) == sorted(paths)
    for path in paths:
        pixels = mpimg.imread(path)
        # 2 + 4 heads = 6 panels: 2 rows x 4 columns of 2.2 inches at 100 dpi.
        assert pixels.shape[:2] == (440, 880)
        assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert not np.array_equal(mpimg.imread(paths[0]), mpimg.imread(paths[1]))


def test_save_attention_maps_takes_tensors_and_is_per_image(moe_checkpoint, tmp_path):
    algorithm = load_checkpoint(moe_checkpoint)
    env = get_dataset_class("RotatedDigits")("", [0])[1]
    images = torch.stack([env[i][0] for i in range(3)])
    paths = save_attention_maps(algorithm, images, tmp_path, names=["a", "b", "c"], threshold=0.6, block=2)
    assert [p.name for p in paths] == ["a_attention.png", "b_attention.png", "c_attention.png"]
    # The map of an image does not depend on the images next to it (batches of one).
    alone = cls_attention(algorithm.featurizer, images[1:2], block=2)
    with torch.no_grad():
        again = cls_attention(algorithm.featurizer, images[1:2], block=2)
    torch.testing.assert_close(alone, again, rtol=0, atol=0)
    with pytest.raises(ValueError, match="threshold must be in"):
        save_attention_maps(algorithm, images, tmp_path, threshold=0.0)
    with pytest.raises(ValueError, match="1-channel inputs"):
        save_attention_maps(algorithm, torch.rand(2, 3, 32, 32), tmp_path)


# ------------------------------------------------------------------------------------ expert maps
def test_expert_figure_colours_each_expert_distinctly():
    expert = torch.arange(16).reshape(4, 4) % 6
    dropped = torch.zeros(4, 4, dtype=torch.bool)
    dropped[1, 2] = dropped[3, 0] = True
    maps = {"blocks.2.mlp": (expert, dropped), "blocks.4.mlp": (expert.flip(0), torch.zeros_like(dropped))}
    figure = expert_figure(np.zeros((32, 32, 3)), maps, num_experts=6)
    assert len(figure.axes) == 2
    assert [ax.get_title().split(" (")[0] for ax in figure.axes] == ["block 2", "block 4"]
    handles = figure.legends[0].legend_handles
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == [f"expert {e}" for e in range(6)] + ["dropped"]
    legend_rgb = {tuple(np.round(h.get_facecolor()[:3], 6)) for h in handles[:6]}
    assert len(legend_rgb) == 6
    colours = expert_colours(6)
    tint = figure.axes[0].get_images()[1].get_array()  # [gh, gw, 4] RGBA over the picture
    for r in range(4):
        for c in range(4):
            np.testing.assert_allclose(tint[r, c, :3], colours[int(expert[r, c])])
    assert len(figure.axes[0].collections[0].get_offsets()) == 2  # the two dropped patches
    assert not figure.axes[1].collections  # nothing dropped there
    for count in (6, 12, 25):
        assert len({tuple(c) for c in expert_colours(count)}) == count


def test_expert_maps_are_the_routers_top1_per_patch(moe_checkpoint):
    algorithm = load_checkpoint(moe_checkpoint)
    layers = {name: m for name, m in algorithm.featurizer.named_modules() if type(m).__name__ == "SparseMoE"}
    inputs = {}
    handles = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0]))
               for name, layer in layers.items()]
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = expert_maps(algorithm.featurizer, x)
    for handle in handles:
        handle.remove()
    assert sorted(maps) == ["blocks.2.mlp", "blocks.4.mlp"]
    for name, layer in layers.items():
        _, _, probs = layer.route(inputs[name].reshape(-1, layer.dim))
        expected = probs.argmax(-1).reshape(2, 65)[:, 1:].reshape(2, MICRO_GRID, MICRO_GRID)  # CLS left out
        assert torch.equal(maps[name].expert, expected)
        assert maps[name].dropped.shape == (2, MICRO_GRID, MICRO_GRID)


def test_vis_experts_command_maps_and_usage(moe_checkpoint, digit_pngs, tmp_path):
    paths = vis_experts.main(["--checkpoint", str(moe_checkpoint), "--images", *map(str, digit_pngs[:2]),
                              "--output_dir", str(tmp_path), "--dataset", "RotatedDigits", "--max_per_env", "8"])
    names = [p.name for p in paths]
    assert names == ["digit0_experts.png", "digit1_experts.png", "usage_blocks_2_mlp.png",
                     "usage_blocks_4_mlp.png", "usage.json"]
    for path in paths[:2]:
        # 2 MoE panels of 2.6 in at 100 dpi; 2.6 + 0.4 in + 2 legend rows (7 entries in 5 columns) of 0.2 in.
        assert mpimg.imread(path).shape[:2] == (340, 520)
    assert mpimg.imread(paths[2]).shape[0] > 100
    usage = json.loads(paths[-1].read_text())
    assert usage["domains"] == ["0", "15", "30", "45", "60", "75"] and len(usage["classes"]) == 10
    for layer in usage["layers"].values():
        domain_counts = np.array(layer["domain_counts"])
        assert domain_counts.shape == (6, 6)
        assert (domain_counts.sum(1) == 8 * MICRO_GRID ** 2).all()  # 8 images x 64 patches, CLS excluded
        assert np.array(layer["class_counts"]).sum() == 6 * 8 * MICRO_GRID ** 2
        np.testing.assert_allclose(np.array(layer["domain_shares"]).sum(1), 1.0)
        class_shares = np.array(layer["class_shares"])
        seen = np.array(layer["class_counts"]).sum(1) > 0
        np.testing.assert_allclose(class_shares[seen].sum(1), 1.0)


def test_save_expert_maps_on_tensors(moe_checkpoint, dense_checkpoint, tmp_path):
    algorithm = load_checkpoint(moe_checkpoint)
    paths = save_expert_maps(algorithm, torch.rand(2, 1, 32, 32), tmp_path)
    assert [p.name for p in paths] == ["image_000_experts.png", "image_001_experts.png"]
    with pytest.raises(ValueError, match="has no MoE layers"):
        save_expert_maps(load_checkpoint(dense_checkpoint), torch.rand(1, 1, 32, 32), tmp_path)


def test_count_by_group_and_row_shares():
    expert = torch.tensor([[0, 1, 1], [2, 2, 2], [0, 0, 1]])
    group = torch.tensor([1, 0, 1])
    counts = count_by_group(expert, group, num_groups=3, num_experts=3)
    assert counts.tolist() == [[0, 0, 3], [3, 3, 0], [0, 0, 0]]
    shares = row_shares(counts.numpy())
    assert shares.tolist() == [[0, 0, 1], [0.5, 0.5, 0], [0, 0, 0]]


# ------------------------------------------------------------------------------------ inputs and errors
def test_image_files_become_the_datasets_inputs(digit_pngs, tmp_path):
    x = load_image_files(digit_pngs[:2], InputSpec((1, 32, 32), imagenet_normalized=False))
    expected = torch.from_numpy(np.asarray(Image.open(digit_pngs[0]), dtype=np.float32) / 255)
    assert x.shape == (2, 1, 32, 32)
    torch.testing.assert_close(x[0, 0], expected)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(rgb)
    spec = InputSpec((3, 32, 32), imagenet_normalized=True)
    x = load_image_files([rgb], spec)
    torch.testing.assert_close(x[0], image_eval_transform(32)(Image.open(rgb).convert("RGB")))
    shown = to_display(x[0], spec)
    resized = np.asarray(Image.open(rgb).convert("RGB").resize((32, 32), Image.BILINEAR)) / 255
    assert shown.shape == (32, 32, 3) and shown.min() >= 0 and shown.max() <= 1
    assert np.abs(shown - resized).mean() < 0.05  # un-normalised back to the picture
    assert prepare_tensors(torch.rand(1, 16, 16), InputSpec((1, 32, 32), False)).shape == (1, 1, 32, 32)


def test_bad_inputs_give_one_clear_error(moe_checkpoint, digit_pngs, tmp_path):
    spec = InputSpec((1, 32, 32), False)
    with pytest.raises(FileNotFoundError, match="missing.png' does not exist"):
        load_image_files([tmp_path / "missing.png"], spec)
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*junk.png"):
        load_image_files([junk], spec)
    with pytest.raises(ValueError, match="1-channel inputs"):
        prepare_tensors(torch.rand(2, 3, 32, 32), spec)
    with pytest.raises(ValueError, match="block 9 out of range"):
        vis_attention.main(["--checkpoint", str(moe_checkpoint), "--images", str(digit_pngs[0]),
                            "--output_dir", str(tmp_path), "--block", "9"])
    with pytest.raises(ValueError, match="nothing to draw"):
        vis_experts.main(["--checkpoint", str(moe_checkpoint), "--output_dir", str(tmp_path)])


def test_vis_experts_on_a_dense_checkpoint_exits_with_one_line(dense_checkpoint, digit_pngs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "domainbed.scripts.vis_experts", "--checkpoint",
                             str(dense_checkpoint), "--images", str(digit_pngs[0]), "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: checkpoint") and "has no MoE layers" in result.stderr
    assert not list(tmp_path.iterdir())
