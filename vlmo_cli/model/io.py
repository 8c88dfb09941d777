"""Moved to :mod:`vlmo_cli.layout`, :mod:`vlmo_cli.model.weights` and :mod:`vlmo_cli.factory`; kept until the redesign lands."""

from ..factory import load_model, save_model, vocab_files  # noqa: F401
from ..layout import (CONFIG_NAME, MODEL_FILES, TOKENIZER_FILES, WEIGHTS_NAME, model_dir_kind,  # noqa: F401
                      resolve_model_dir, tokenizer_files)
from .weights import build_model, load_state_dict_checked, read_weights, state_dict_for_saving  # noqa: F401


def atomic_directory(final):
    """A new temporary sibling of ``final`` for :func:`commit_directory` (the old two-call form of
    :func:`vlmo_cli.layout.atomic_directory`)."""
    from ..outputs import make_temp_dir

    return make_temp_dir(final)


def commit_directory(tmp, final) -> None:
    """Move a fully written temporary directory into place (replacing ``final``), with the umask's permissions."""
    from ..outputs import apply_umask, replace_directory, sync_to_disk

    sync_to_disk(tmp)
    apply_umask(tmp)
    replace_directory(tmp, final)
