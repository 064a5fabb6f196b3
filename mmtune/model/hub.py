"""Hub ids in a model config: usable from the local cache, or reachable, or one clear error in seconds.

    check_sources(cfg.model)     # before any model is built or downloaded

A hub id (`org/name`) that is in the local Hugging Face cache is used from there. One that is not
needs the hub: without it (no network, `HF_HUB_OFFLINE=1`) transformers would retry for about a
minute and end in a traceback, so the hub's host is probed once with a short timeout first (not
behind a proxy, where only the proxy could tell) and an unreachable hub is a ConfigError naming the
key and the three ways on.
"""

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from mmtune.config import ConfigError, ModelConfig, model_sources

PROBE_SECONDS = 3.0  # how long the hub's host may take to accept a connection
CACHED_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def check_sources(cfg: ModelConfig) -> None:
    """Raise ConfigError for a hub id that is neither cached nor reachable (local paths are the config's
    to check: `mmtune.config` refuses a missing one)."""
    missing = [(k, v) for k, v in model_sources(cfg).items() if not Path(v).exists() and not cached(v)]
    if not missing:
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    reason = "HF_HUB_OFFLINE is set" if offline else hub_unreachable()
    if reason:
        key, repo = missing[0]
        raise ConfigError(f"{key}: {repo} is a hub id that is not in the local cache, and {reason}: download it "
                          f"once where there is network (`huggingface-cli download {repo}`), then run with "
                          f"HF_HUB_OFFLINE=1, or give a local folder")


def cached(repo: str) -> bool:
    """Whether a hub repo has files in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo, name), str) for name in CACHED_FILES)
    except ValueError:  # not a valid repo id
        return False


def hub_unreachable() -> str | None:
    """Why the hub's host cannot be reached (within PROBE_SECONDS), or None when it can."""
    if any(os.environ.get(k) for k in PROXY_VARIABLES):
        return None  # the hub is reached through a proxy: a direct probe would say nothing
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            return None
    except OSError as e:
        return f"{host}:{port} cannot be reached ({e.strerror or e.__class__.__name__})"
