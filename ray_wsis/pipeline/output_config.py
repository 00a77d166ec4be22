"""The config an output was made with: <output>/config.yaml, written by every run.

Commands that read an output (visualize, export, status, calibrate, train-downstream and the
stages) take their config from there when no --config is given. Credentials never enter a
config (they come from the environment), so the file holds no secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import yaml

from ray_wsis.config import Config, ConfigError, StorageConfig, config_field, config_from_dict, leaf_fields, load_config
from ray_wsis.storage import StorageError, exists, read_bytes, resolve, write_bytes_atomic

CONFIG_FILE = "config.yaml"


def save_output_config(config: Config) -> None:
    text = "# the resolved config of this output (ray-wsis writes it on every run)\n"
    text += yaml.safe_dump(config.to_dict(), sort_keys=False)
    write_bytes_atomic(resolve(config.output, config.storage).child(CONFIG_FILE), text.encode())


def recorded_config(output: str, storage: Optional[StorageConfig] = None) -> Optional[Config]:
    """The config saved in ``output``, or None when it has none."""
    location = resolve(output, storage).child(CONFIG_FILE)
    try:
        if not exists(location):
            return None
        text = read_bytes(location)
    except OSError as exc:
        raise StorageError(f"cannot read {location.uri}: {str(exc).splitlines()[0]}") from None
    try:
        tree = yaml.safe_load(text) or {}
        return config_from_dict(tree)
    except (yaml.YAMLError, ConfigError) as exc:
        raise ConfigError(f"{location.uri} is not a ray_wsis config: {exc}") from None


def differences(old: Config, new: Config, fields: Optional[Sequence[str]] = None) -> list[str]:
    """``name: old -> new`` for each leaf field that differs (all fields, or those given)."""
    names = fields if fields is not None else leaf_fields(old)
    return [
        f"{name}: {config_field(old, name)!r} -> {config_field(new, name)!r}"
        for name in names
        if config_field(old, name) != config_field(new, name)
    ]


def load_output_config(output: str, path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """The config of an existing output: ``path`` (+ overrides) if given, else its config.yaml (+ overrides)."""
    if path:
        return load_config(path, overrides)
    saved = recorded_config(output)
    if saved is None:
        raise ConfigError(f"{output} holds no {CONFIG_FILE} (made by an older ray_wsis?): pass --config")
    return load_config(None, overrides, base=saved.to_dict())
