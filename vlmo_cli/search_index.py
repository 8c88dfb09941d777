"""Moved to :mod:`vlmo_cli.inference.search`; kept until the redesign lands."""

from .inference.search import *  # noqa: F401,F403


def require_itm(net, source) -> None:
    """The old form of ``InferenceModel.require_head("itm", ITM_HOW)``."""
    from .errors import CheckpointError
    from .factory import ITM_HOW

    if getattr(net, "itm_score", None) is None:
        raise CheckpointError(f"{source}: the model has no 'itm' head (heads: {', '.join(net.config.heads) or 'none'}); "
                              f"{ITM_HOW}")
