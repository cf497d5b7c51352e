"""Saving and loading model.pkl files and resume states, atomically and without running pickled code.

``model.pkl`` keeps DomainBed's dict layout (args, model_input_shape, model_num_classes,
model_num_domains, model_hparams, model_dict) so DomainBed tooling keeps working, but ``args`` is a
plain dict, so our files load with ``torch.load(weights_only=True)``: a checkpoint passed around
cannot execute code when opened.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file in the same folder, fsync it, then rename over ``path``:
    a reader (or a resumed run) sees the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cpu_state_dict(module) -> dict:
    """``module.state_dict()`` on the CPU, keeping one copy of tensors registered under two names
    (``featurizer.*`` and ``network.0.*`` are the same weights), so the file stores them once."""
    copies: dict[tuple, torch.Tensor] = {}
    state = {}
    for key, value in module.state_dict().items():
        identity = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if identity not in copies:
            copies[identity] = value.detach().cpu()
        state[key] = copies[identity]
    return state


def model_record(algorithm, args: dict) -> dict:
    """The model.pkl dict of a trained algorithm (its whole state: an averaging method's averaged
    weights are part of it, and ``load_checkpoint`` rebuilds the method around them)."""
    return {
        "args": dict(args),
        "model_input_shape": list(algorithm.input_shape),
        "model_num_classes": algorithm.num_classes,
        "model_num_domains": algorithm.num_domains,
        "model_hparams": dict(algorithm.hparams),
        "model_dict": cpu_state_dict(algorithm),
    }


def save_model(path: str | os.PathLike, algorithm, args: dict) -> None:
    atomic_torch_save(model_record(algorithm, args), path)


# ----------------------------------------------------------------------------------------------
# loading

class UnsafeCheckpointError(RuntimeError):
    """The file needs full unpickling, which can execute code stored in it."""


def read_checkpoint_file(path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> dict:
    """``torch.load`` a model.pkl without executing code: tensors, containers, primitives and
    ``argparse.Namespace`` (DomainBed's ``args``) only. Anything else needs ``allow_unsafe_pickle``."""
    import argparse
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_unsafe_pickle:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported object"
            raise UnsafeCheckpointError(
                f"'{path}' holds objects that only full unpickling can restore, and unpickling can run "
                f"code stored in the file ({detail[:160]}); if you trust where it came from, pass "
                "--allow_unsafe_pickle") from None
    return torch.load(path, map_location="cpu", weights_only=False)


def _args_dict(args) -> dict:
    return dict(vars(args)) if hasattr(args, "__dict__") else dict(args or {})


def _authors_hparams(saved: dict, model_dict: dict) -> tuple[dict, dict, tuple[int, int, int]]:
    """Rebuild the hparams and input shape of an authors'-code GMoE checkpoint from the shapes of
    its weights, and rename its keys to ours (``model.head.`` -> ``classifier.``, ``model.`` -> ``featurizer.``,
    MoE layout -> SparseMoE)."""
    from . import hparams_registry
    from .moe.authors_layout import from_authors_layout

    converted, moe_blocks = from_authors_layout(model_dict)
    state = {}
    for key, value in converted.items():
        key = key[len("model."):] if key.startswith("model.") else key
        state[("classifier." + key[len("head."):]) if key.startswith("head.") else "featurizer." + key] = value
    patch = state["featurizer.patch_embed.proj.weight"]  # [D, C, p, p]
    embed_dim, in_chans, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    tokens = state["featurizer.pos_embed"].shape[1] - 1
    grid = int(round(tokens ** 0.5))
    depth = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("featurizer.blocks."))
    hidden = state[f"featurizer.blocks.{min(moe_blocks)}.mlp.experts.fc1_weight"].shape[1]
    router = "cosine" if any(k.endswith("router.expert_embeddings") for k in state) else "linear"
    args = _args_dict(saved.get("args"))
    dataset = args.get("dataset", "PACS")
    hparams = hparams_registry.default_hparams("SFMOE", dataset)
    hparams.update({key: value for key, value in (saved.get("model_hparams") or {}).items()
                    if key in ("lr", "weight_decay", "batch_size", "dropout")})
    hparams.update(
        backbone="gmoe_small_patch16_224", pretrained=False, pretrained_file="",
        moe_blocks=list(moe_blocks), num_experts=next(iter(moe_blocks.values())), router=router,
        backbone_kwargs=dict(embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64),
                             patch_size=patch_size, mlp_ratio=hidden / embed_dim),
    )
    img_size = grid * patch_size
    return hparams, state, (in_chans, img_size, img_size)


def fill_shared_names(state: dict, module) -> dict:
    """Complete ``state`` with the other names of tensors ``module`` registers twice (a file that
    stores ``featurizer.*`` loads into ``network.0.*`` too, and the other way round)."""
    names_by_tensor: dict[tuple, list[str]] = {}
    for key, value in module.state_dict().items():
        identity = (value.data_ptr(), tuple(value.shape)) if value.numel() else (key,)
        names_by_tensor.setdefault(identity, []).append(key)
    state = dict(state)
    for names in names_by_tensor.values():
        present = [name for name in names if name in state]
        for name in names:
            if present and name not in state:
                state[name] = state[present[0]]
    return state


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    allow_unsafe_pickle: bool = False):
    """An algorithm ready to ``predict``, from our model.pkl or one written by the authors' code.

    The authors' files (DomainBed layout with their MoE library's keys, see method.md) are
    recognised by their ``experts.batched_fc1_w`` keys and rebuilt as an SFMOE algorithm with the
    same blocks, experts and router, predicting what their model predicts.
    """
    from .algorithms import get_algorithm_class
    from .moe.authors_layout import is_authors_layout

    saved = read_checkpoint_file(path, allow_unsafe_pickle)
    missing = {"model_dict", "model_num_classes"} - set(saved)
    if missing:
        raise ValueError(f"'{path}' is not a DomainBed model.pkl (missing {', '.join(sorted(missing))})")
    model_dict = saved["model_dict"]
    if is_authors_layout(model_dict):
        hparams, state, weights_input_shape = _authors_hparams(saved, model_dict)
        input_shape = tuple(saved.get("model_input_shape") or weights_input_shape)
        algorithm_name = "SFMOE"
    else:
        hparams = dict(saved["model_hparams"], pretrained=False, pretrained_file="")
        state = model_dict
        input_shape = tuple(saved["model_input_shape"])
        algorithm_name = _args_dict(saved.get("args")).get("algorithm", "ERM")
    algorithm = get_algorithm_class(algorithm_name)(input_shape, saved["model_num_classes"],
                                                    saved.get("model_num_domains", 1), hparams)
    state = fill_shared_names(state, algorithm)
    result = algorithm.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys]
    missing_keys = [k for k in result.missing_keys]
    if unexpected or missing_keys:
        raise ValueError(f"'{path}' does not match a {algorithm_name} model with backbone "
                         f"{hparams['backbone']}: missing {missing_keys[:3]}, unexpected {unexpected[:3]}")
    algorithm.checkpoint_args = _args_dict(saved.get("args"))  # dataset, test_envs... of the run
    return algorithm.to(device).eval()
