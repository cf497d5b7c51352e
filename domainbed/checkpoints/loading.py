"""``load_checkpoint``: an algorithm ready to predict, from our model.pkl or one the authors' code wrote."""

from __future__ import annotations

import os

import torch

from .authors_layout import authors_model, is_authors_layout
from .domainbed_layout import domainbed_model, is_domainbed_layout
from .safe_loading import read_checkpoint_file


def _args_dict(args) -> dict:
    return dict(vars(args)) if hasattr(args, "__dict__") else dict(args or {})


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
    """An algorithm ready to ``predict``, from our model.pkl, one written by the authors' code, or
    one written by DomainBed itself.

    Ours name their algorithm and hold its full hparams; the authors' files (DomainBed layout with
    their MoE library's keys, see method.md) are recognised by their ``experts.batched_fc1_w`` keys
    and rebuilt as an SFMOE algorithm with the same blocks, experts and router, predicting what
    their model predicts. DomainBed's own files (hparams in DomainBed's names, no ``backbone``) are
    rebuilt as an ERM predictor with their ResNet or DINOv2 featurizer and classifier (see
    ``domainbed_layout``). ``algorithm.checkpoint_args`` holds the run's args (dataset, test_envs).
    """
    from ..algorithms import get_algorithm_class

    saved = read_checkpoint_file(path, allow_unsafe_pickle)
    missing = {"model_dict", "model_num_classes"} - set(saved)
    if missing:
        raise ValueError(f"'{path}' is not a DomainBed model.pkl (missing {', '.join(sorted(missing))})")
    args = _args_dict(saved.get("args"))
    if is_authors_layout(saved["model_dict"]):
        hparams, state, weights_input_shape = authors_model(saved)
        input_shape = tuple(saved.get("model_input_shape") or weights_input_shape)
        algorithm_name = "SFMOE"
    elif is_domainbed_layout(saved):
        hparams, state, input_shape = domainbed_model(saved, path)
        algorithm_name = "ERM"  # DomainBed's prediction networks, whatever method trained them
    else:
        hparams = dict(saved["model_hparams"], pretrained=False, pretrained_file="")
        state = saved["model_dict"]
        input_shape = tuple(saved["model_input_shape"])
        algorithm_name = saved.get("model_algorithm") or args.get("algorithm", "ERM")
    algorithm = get_algorithm_class(algorithm_name)(input_shape, saved["model_num_classes"],
                                                    saved.get("model_num_domains", 1), hparams)
    result = algorithm.load_state_dict(fill_shared_names(state, algorithm), strict=False)
    if result.unexpected_keys or result.missing_keys:
        raise ValueError(f"'{path}' does not match a {algorithm_name} model with backbone "
                         f"{hparams['backbone']}: missing {result.missing_keys[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    algorithm.checkpoint_args = args  # dataset, test_envs... of the run
    return algorithm.to(device).eval()
