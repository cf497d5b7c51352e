"""GMoE timm models: registration, MoE placement, pretrained upcycling, the authors' layout."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Mlp

import domainbed.models.gmoe  # noqa: F401  (registers the models)
from domainbed.models.gmoe import convert_to_moe, resolve_moe_blocks
from domainbed.moe import CosineRouter, SparseMoE
from domainbed.checkpoints.authors_layout import authors_moe_blocks, from_authors_layout, to_authors_layout


def _expert_params(dim: int, hidden: int) -> int:
    return dim * hidden + hidden + hidden * dim + dim


def test_gmoe_small_matches_the_papers_recipe():
    model = timm.create_model("gmoe_small_patch16_224", num_classes=7)
    kinds = ["S" if isinstance(b.mlp, SparseMoE) else "F" for b in model.blocks]
    assert "".join(kinds) == "FFFFFFFFSFSF"
    moe = model.blocks[8].mlp
    assert (moe.num_experts, moe.top_k, moe.capacity_factor) == (6, 1, 1.5)
    assert isinstance(moe.router, CosineRouter)
    assert model.blocks[11].drop_path2.drop_prob == pytest.approx(0.1)
    # 5 extra experts per MoE block plus the router (256-d projection, 256x6 embeddings, scale)
    router = 384 * 256 + 256 + 256 * 6 + 1
    extra = 2 * (5 * _expert_params(384, 1536) + router)
    d = 384  # dense ViT-S/16: patch embed, cls + pos (197 tokens), 12 blocks, final norm, head
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + _expert_params(d, 4 * d)
    dense = (3 * 16 * 16 * d + d) + d + 197 * d + 12 * block + 2 * d + (d * 7 + 7)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == dense + extra
    assert 33e6 < n_params < 35e6  # the paper's "about 34M" (ViT-S/16: about 22M)


@pytest.mark.parametrize("spec, depth, expected", [
    ("last2", 12, [8, 10]), ("last2", 6, [2, 4]), ("every2", 12, [0, 2, 4, 6, 8, 10]),
    ([5, 1, 5], 6, [1, 5]),
])
def test_moe_block_placement(spec, depth, expected):
    assert resolve_moe_blocks(spec, depth) == expected


@pytest.mark.parametrize("spec", ["last3", [6]])
def test_bad_moe_blocks_raise(spec):
    with pytest.raises(ValueError, match="moe_blocks"):
        resolve_moe_blocks(spec, 6)


def test_micro_models_are_twins_and_take_moe_kwargs():
    torch.manual_seed(0)
    sparse = timm.create_model("gmoe_micro_patch4_32", num_classes=10, in_chans=1, img_size=28,
                               moe_blocks="every2", num_experts=3, top_k=2, router="linear",
                               capacity_factor="dropless")  # timm.create_model drops None kwargs
    dense = timm.create_model("vit_micro_patch4_32", num_classes=10, in_chans=1, img_size=28)
    assert [i for i, b in enumerate(sparse.blocks) if isinstance(b.mlp, SparseMoE)] == [0, 2, 4]
    moe = sparse.blocks[4].mlp
    assert (moe.num_experts, moe.top_k, moe.capacity_factor, type(moe.router).__name__) == (3, 2, None, "LinearRouter")
    dense_keys = {k for k in dense.state_dict() if ".mlp." not in k}
    assert dense_keys == {k for k in sparse.state_dict() if ".mlp." not in k}
    x = torch.randn(5, 1, 28, 28)
    assert sparse(x).shape == dense(x).shape == (5, 10)


def test_pretrained_local_file_copies_each_ffn_into_every_expert(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_micro_patch4_32")  # stands in for a DeiT checkpoint (1000 classes)
    path = tmp_path / "micro.pth"
    torch.save(source.state_dict(), path)
    model = timm.create_model("gmoe_micro_patch4_32", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.moe_block_indices == [2, 4]
    ours = model.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith("head."):
            continue  # a new head for 10 classes
        block = key.split(".")[1] if key.startswith("blocks.") else None
        if block in ("2", "4") and ".mlp." in key:
            continue
        assert torch.equal(ours[key], value), key
    for i in (2, 4):
        dense, experts = source.blocks[i].mlp, model.blocks[i].mlp.experts
        for e in range(6):
            assert torch.equal(experts.fc1_weight[e], dense.fc1.weight)
            assert torch.equal(experts.fc1_bias[e], dense.fc1.bias)
            assert torch.equal(experts.fc2_weight[e], dense.fc2.weight)
            assert torch.equal(experts.fc2_bias[e], dense.fc2.bias)


def test_pretrained_without_weights_raises_instead_of_random_init():
    with pytest.raises(RuntimeError, match="pretrained"):
        timm.create_model("gmoe_micro_patch4_32", pretrained=True)


def test_convert_to_moe_works_on_any_timm_vit_and_keeps_its_function():
    torch.manual_seed(0)
    vit = timm.create_model("vit_micro_patch4_32", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = vit(x)
        # all experts active and nothing dropped: the upcycled model computes the dense one
        after = convert_to_moe(vit, "last2", num_experts=3, top_k=3, capacity_factor=None).eval()(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="blocks"):
        convert_to_moe(torch.nn.Linear(2, 2))


def _authors_moe_state(prefix: str, dim: int, hidden: int, experts: int, proj: int, log_scale: float):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        prefix + "gates.0.temperature": torch.tensor([log_scale]),
        prefix + "gates.0.cosine_projector.weight": r(proj, dim),
        prefix + "gates.0.cosine_projector.bias": r(proj),
        prefix + "gates.0.sim_matrix": r(proj, experts),
        prefix + "experts.batched_fc1_w": r(experts, hidden, dim) / math.sqrt(dim),
        prefix + "experts.batched_fc1_bias": r(experts, hidden),
        prefix + "experts.batched_fc2_w": r(experts, hidden, dim) / math.sqrt(hidden),  # in x out
        prefix + "experts.batched_fc2_bias": r(experts, dim),
    }


@pytest.mark.parametrize("log_scale", [math.log(2.0), math.log(500.0)])  # the scale is capped at 100
def test_authors_layout_converts_and_computes_the_papers_formula(log_scale):
    dim, hidden, experts, proj = 8, 20, 4, 16
    prefix = "model.blocks.3.mlp."
    theirs = _authors_moe_state(prefix, dim, hidden, experts, proj, log_scale)
    theirs["model.head.weight"] = torch.zeros(2, dim)
    ours, blocks = from_authors_layout(theirs)
    assert blocks == {3: experts}
    assert torch.equal(ours["model.head.weight"], theirs["model.head.weight"])

    moe = SparseMoE(dim, hidden, num_experts=experts, top_k=1, router_dim=proj, capacity_factor=None).eval()
    moe.load_state_dict({k[len(prefix):]: v for k, v in ours.items() if k.startswith(prefix)})
    x = torch.randn(11, dim, generator=torch.Generator().manual_seed(1))

    # reference, straight from the formulas, on the authors' tensors
    t = theirs
    h = F.normalize(x @ t[prefix + "gates.0.cosine_projector.weight"].T + t[prefix + "gates.0.cosine_projector.bias"], dim=-1)
    c = F.normalize(t[prefix + "gates.0.sim_matrix"], dim=0)
    scale = math.exp(min(log_scale, math.log(100.0)))
    probs = (scale * h @ c).softmax(-1)
    gate, chosen = probs.max(-1)
    hidden_act = F.gelu(torch.einsum("td,thd->th", x, t[prefix + "experts.batched_fc1_w"][chosen])
                        + t[prefix + "experts.batched_fc1_bias"][chosen])
    y = torch.einsum("th,thd->td", hidden_act, t[prefix + "experts.batched_fc2_w"][chosen]) \
        + t[prefix + "experts.batched_fc2_bias"][chosen]
    with torch.no_grad():
        torch.testing.assert_close(moe(x), gate.unsqueeze(-1) * y, rtol=1e-5, atol=1e-5)

    back = to_authors_layout(ours)
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_whole_model_round_trip_through_the_authors_layout():
    model = timm.create_model("gmoe_micro_patch4_32", num_classes=3)
    theirs = to_authors_layout({"model." + k: v for k, v in model.state_dict().items()})
    assert authors_moe_blocks(theirs) == {2: 6, 4: 6}
    assert theirs["model.blocks.2.mlp.experts.batched_fc2_w"].shape == (6, 256, 64)
    ours, _ = from_authors_layout(theirs)
    fresh = timm.create_model("gmoe_micro_patch4_32", num_classes=3)
    fresh.load_state_dict({k[len("model."):]: v for k, v in ours.items()})
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_mlp_without_fc_layers_cannot_be_upcycled():
    with pytest.raises(ValueError, match="fc1"):
        SparseMoE.from_mlp(torch.nn.Linear(4, 4))
    assert isinstance(SparseMoE.from_mlp(Mlp(4, 8)), SparseMoE)


# ------------------------------------------------------------------ backbone hparams reach every family
@pytest.mark.parametrize("backbone, drop_paths", [
    ("convnext_atto", lambda m: [b.drop_path for stage in m.stages for b in stage.blocks]),
    ("resnet18", lambda m: [b.drop_path for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]),
    ("vit_micro_patch4_32", lambda m: [b.drop_path1 for b in m.blocks]),
])
def test_drop_path_rate_reaches_every_family_with_stochastic_depth(backbone, drop_paths):
    from domainbed.models.backbones import create_backbone

    model = create_backbone((3, 32, 32), {"backbone": backbone, "drop_path_rate": 0.3})
    rates = [getattr(layer, "drop_prob", 0.0) for layer in drop_paths(model)]
    assert max(rates) == pytest.approx(0.3)  # linear over depth, the last block at the rate


def test_image_size_reaches_patch_models_and_size_agnostic_ones_build():
    from domainbed.models.backbones import create_backbone

    vit = create_backbone((1, 16, 16), {"backbone": "vit_micro_patch4_32"})
    assert vit.patch_embed.grid_size == (4, 4) and vit.pos_embed.shape[1] == 1 + 16
    convnet = create_backbone((1, 16, 16), {"backbone": "resnet18"})  # takes any size: nothing to pass
    assert convnet(torch.zeros(2, 1, 16, 16)).shape == (2, convnet.num_features)


def test_drop_path_default_is_deits_only_on_deit_style_vits():
    from domainbed.hparams_registry import resolve_hparams

    rates = {backbone: resolve_hparams("ERM", "PACS", 0, 0, {"backbone": backbone})["drop_path_rate"]
             for backbone in ("deit_small_patch16_224", "gmoe_small_patch16_224", "resnet50", "convnext_atto")}
    assert rates == {"deit_small_patch16_224": 0.1, "gmoe_small_patch16_224": 0.1, "resnet50": 0.0,
                     "convnext_atto": 0.0}
