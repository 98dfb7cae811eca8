"""The Hugging Face ``PyTorchModelHubMixin`` conventions on learned optimizers and checkpoints.

As Celo and PyLO do for their learned optimizers::

    opt.save_pretrained("my-optimizer")                      # config.json, model.safetensors, card
    opt = GARO.from_pretrained("my-optimizer", model.parameters())       # a local directory
    opt = GARO.from_pretrained("owner/name", model.parameters())         # a Hub repo id
    opt.push_to_hub("owner/name")                            # huggingface_hub.HfApi upload

and the same on ``metaopt.checkpoint.Checkpoint`` (``Checkpoint.from_pretrained(dir_or_repo)``
returns the checkpoint). The directory layout is ``metaopt.hub``'s; a repo id is fetched with
``huggingface_hub.snapshot_download``, so it goes through (and is served from) the
``huggingface_hub`` cache, and with ``HF_HUB_OFFLINE=1`` a repo id missing from that cache is a
one-line error naming it. Uploads need ``huggingface_hub`` (the ``hub`` extra) and a token.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PretrainedCheckpointMixin", "PretrainedOptimizerMixin", "push_directory"]


def push_directory(directory: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                   token: str | None = None, commit_message: str = "Upload metaopt optimizer",
                   revision: str | None = None) -> Any:
    """Create ``repo_id`` if needed and upload a ``save_pretrained`` directory to it
    (``huggingface_hub.HfApi.create_repo`` + ``upload_folder``); returns the commit info."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError(f"pushing to the Hub repo {repo_id!r} needs huggingface_hub: "
                          'pip install "metaopt[hub]"') from None
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(directory),
                             commit_message=commit_message, revision=revision)


class _PushMixin:
    """``push_to_hub`` over the ``save_pretrained`` each subclass defines."""

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload metaopt optimizer",
                    revision: str | None = None, **save_kwargs: Any) -> Any:
        """``save_pretrained`` into a temporary directory, then upload it to ``repo_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            directory = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1], **save_kwargs)
            return push_directory(directory, repo_id, private=private, token=token,
                                  commit_message=commit_message, revision=revision)


class PretrainedCheckpointMixin(_PushMixin):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` on ``Checkpoint``."""

    def save_pretrained(self, save_directory: str | os.PathLike, *,
                        training: dict[str, Any] | None = None) -> Path:
        """Write this checkpoint as a Hub-style directory (``metaopt.hub.save_pretrained``)."""
        from . import hub
        return hub.save_pretrained(self, save_directory, training=training)

    @classmethod
    def from_pretrained(cls, dir_or_repo_id: str | os.PathLike, map_location: Any = "cpu",
                        revision: str | None = None):
        """The checkpoint of a local directory or a Hub repo id (``metaopt.hub``)."""
        from . import hub
        return hub.from_pretrained(dir_or_repo_id, map_location=map_location, revision=revision)


class PretrainedOptimizerMixin(_PushMixin):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` on a learned optimizer: one
    with a trained module (``controller`` for GARO, ``policy_module`` for the hybrid's learned
    switching policy) and a ``config`` of constructor options."""

    def _checkpoint_parts(self) -> tuple[Any, dict[str, Any]]:
        """``(module, optimizer options)`` that ``metaopt.load_optimizer`` rebuilds it from."""
        module = getattr(self, "controller", None) or getattr(self, "policy_module", None)
        if module is None:
            raise ValueError(f"save_pretrained: this {type(self).__name__} has no learned module "
                             "(a heuristic or constant policy): nothing to share")
        options = dict(self.config)
        if type(self).__name__ == "HybridGDODE":  # its group options are constructor options too
            group = self.param_groups[0]
            options.update({k: group[k] for k in ("lr", "momentum", "weight_decay", "ode_scale")})
        return module, options

    def save_pretrained(self, save_directory: str | os.PathLike, *,
                        training: dict[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` (``metaopt.hub``)
        to ``save_directory``; ``training``: provenance for the model card."""
        from . import hub
        from .checkpoint import save_checkpoint
        module, options = self._checkpoint_parts()
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = save_checkpoint(directory / hub.MODEL_FILE, module, options, training=training,
                                optimizer_class=_class_name(type(self)))
        return hub.save_pretrained(model, directory)  # config.json and the card beside it

    @classmethod
    def from_pretrained(cls, dir_or_repo_id: str | os.PathLike, params, *,
                        revision: str | None = None, **overrides: Any):
        """This optimizer class over ``params`` from a local ``save_pretrained`` directory, a
        checkpoint file, a shipped name or a Hub repo id; ``overrides`` as in
        ``metaopt.load_optimizer``."""
        from . import hub
        from .checkpoint import CheckpointError, load_checkpoint, load_optimizer, resolve
        path = hub.download(os.fspath(dir_or_repo_id), revision) \
            if hub.is_repo_id(dir_or_repo_id) else resolve(dir_or_repo_id)
        stored = load_checkpoint(path).metadata.get("optimizer_class", "GARO")
        if stored != _class_name(cls):
            raise CheckpointError(f"{os.fspath(dir_or_repo_id)}: holds a {stored} checkpoint, "
                                  f"not {_class_name(cls)} (use metaopt.load_optimizer)")
        return load_optimizer(path, params, **overrides)


def _class_name(cls: type) -> str:
    """The checkpoint's ``optimizer_class`` of a runtime class (``GlobalAdaptiveSGD`` is GARO)."""
    for base in cls.__mro__:
        if base.__name__ in ("GARO", "HybridGDODE"):
            return base.__name__
    return cls.__name__
