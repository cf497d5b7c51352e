"""How a run uses its GPU: TF32 matmuls, cuDNN autotuning, fused optimizers, ``torch.compile``.

Speed settings that change no result a user can rely on are on by default; ``--deterministic``
turns off the ones that trade bitwise repeatability for speed (TF32 rounding, cuDNN's autotuned
kernel choice). Everything here is a no-op on CPU, where the defaults are already exact.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn


def configure_cuda(device: torch.device, tf32: bool, deterministic: bool) -> dict:
    """Set the process-wide CUDA numerics for a run; returns them for the records.

    TF32 runs fp32 matmuls and convolutions on tensor cores with a 10-bit mantissa (8x the fp32
    rate on Hopper): the same accuracy in training as fp32 for ViTs, but not bit-identical to it.
    cuDNN's benchmark mode picks the fastest kernel per shape, which may vary run to run; its
    deterministic mode only under ``--deterministic``.
    """
    tf32 = bool(tf32 and not deterministic and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    return {"tf32": tf32, "cudnn_benchmark": device.type == "cuda" and not deterministic}


def use_fused_optimizers(algorithm, device: torch.device) -> list[str]:
    """Switch the algorithm's Adam/AdamW optimizers to PyTorch's fused CUDA kernel (one kernel per
    step instead of one per parameter group tensor list), before their first step. Returns their
    attribute names. Same update, to rounding."""
    if device.type != "cuda":
        return []
    fused = []
    for name, optimizer in algorithm.training_objects.items():
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) or optimizer.state:
            continue
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if not all(p.is_cuda and p.is_floating_point() for p in parameters):
            continue
        for group in optimizer.param_groups:
            group.update(fused=True, foreach=False)
        optimizer.defaults.update(fused=True, foreach=False)
        fused.append(name)
    return fused


def networks_to_compile(module: nn.Module) -> list[nn.Module]:
    """Every network ``module`` trains or evaluates, as the units ``torch.compile`` should see: each
    backbone (a module with ``num_features``: timm models, DINOv2 features) wherever it sits
    (``network``, a copy for inner steps, an averaged copy, a frozen teacher), found once each.
    Heads and small encoders stay eager: they are a rounding error of the step's time."""
    found, seen = [], set()

    def walk(child: nn.Module) -> None:
        if id(child) in seen:
            return
        seen.add(id(child))
        if hasattr(child, "num_features") and any(True for _ in child.parameters()):
            found.append(child)
            return
        for grandchild in child.children():
            walk(grandchild)

    for child in module.children():
        walk(child)
    return found


def compile_networks(module: nn.Module, **options) -> list[nn.Module]:
    """``torch.compile`` each of ``networks_to_compile(module)`` in place (state dict keys unchanged).
    ``DOMAINBED_COMPILE_BACKEND`` picks another backend than inductor (the tests use "aot_eager",
    which captures the same graphs without generating kernels)."""
    backend = os.environ.get("DOMAINBED_COMPILE_BACKEND")
    if backend:
        options.setdefault("backend", backend)
    networks = networks_to_compile(module)
    for network in networks:
        network.compile(**options)
    return networks
