"""Saving and loading models: one file holding a JSON header (format, class, configuration) and
the parameters under their PyTorch names. Files are written atomically (temporary file, fsync,
rename), so an interrupted save never leaves a half-written model behind."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from ._atomic import atomic_write

__all__ = ["save", "load", "register"]

FORMAT = "elbokit-model"
VERSION = 1
_REGISTRY: dict = {}


def register(cls):
    """Class decorator: models saved under cls.__name__ load back as cls."""
    _REGISTRY[cls.__name__] = cls
    return cls


def save(model, path) -> str:
    path = os.fspath(path)
    header = {"format": FORMAT, "version": VERSION, "class": type(model).__name__, "config": model.config}
    arrays = {"__elbokit__": np.array(json.dumps(header))}
    for name, value in model.parameters().items():
        arrays["param/" + name] = value
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load(path):
    """Loads a model saved by ``model.save``. A truncated, corrupted or foreign file raises
    ValueError saying what it is not."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("it holds a single array, not an archive")
            if "__elbokit__" not in f.files:
                raise ValueError("it has no elbokit header")
            header = json.loads(str(f["__elbokit__"]))
            params = {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}
    except MemoryError:
        raise
    except Exception as e:  # a damaged archive fails in zipfile, zlib, struct, NumPy's format or JSON
        raise ValueError(f"{path!r} is not a readable elbokit model file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path!r} is not an elbokit model file (its header is not a JSON object)")
    if header.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not an elbokit model file (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{path!r} has format version {header.get('version')!r}; this elbokit reads version {VERSION}")
    cls = _REGISTRY.get(header.get("class")) if isinstance(header.get("class"), str) else None
    if cls is None:
        raise ValueError(f"{path!r} holds an unknown model class {header.get('class')!r}; known: {sorted(_REGISTRY)}")
    config = header.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} is damaged: its model configuration is {config!r}, not a JSON object")
    try:
        model = cls(**config)
        model.set_parameters(params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path!r} is damaged: its {cls.__name__} configuration or parameters do not load ({e})") from None
    return model
