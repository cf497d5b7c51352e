"""Is a model's pretrained checkpoint at hand? Answered in seconds, before timm tries the hub.

timm fetches pretrained weights from the Hugging Face hub into its cache. Without a network a
cold fetch retries for about a minute before failing; and with ``HF_HUB_OFFLINE=1`` it fails at
once. Here: weights already in the cache are used as they are (offline or not); otherwise, when the
hub is unreachable (offline mode, or no TCP connection within a few seconds), the run stops with
the ways to provide the weights.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

HUB_FILES = ("model.safetensors", "pytorch_model.bin")
PROBE_SECONDS = 3.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """A TCP connection to the hub (``HF_ENDPOINT`` if set) opens within ``timeout`` seconds."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_hub_file(repo_id: str) -> str | None:
    """The path of the repo's weights in the local Hugging Face cache, if they are there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_FILES:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            return path
    return None


def unavailable_reason(model_name: str) -> str | None:
    """Why timm could not get ``model_name``'s pretrained weights now, or None if it can try."""
    import timm

    config = timm.models.get_pretrained_cfg(model_name)
    repo_id = getattr(config, "hf_hub_id", None) if config is not None else None
    if not repo_id or cached_hub_file(repo_id):
        return None
    if hub_offline():
        return "they are not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return "they are not in the Hugging Face cache and the hub cannot be reached (no network?)"
    return None
