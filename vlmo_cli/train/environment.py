"""What a run ran on, recorded once at its start as ``RUN/environment.json`` (read by ``vlmo report``)."""

from __future__ import annotations

import json
import platform
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..layout import ENVIRONMENT_NAME


def environment_info(accelerator: Any = None) -> dict[str, Any]:
    """Versions, host, device and process layout of this process (the main one when called there)."""
    import accelerate
    import torch

    from .. import __version__

    info: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vlmo_cli": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "cuda": torch.version.cuda or "none",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "cpu_threads": torch.get_num_threads(),
    }
    if accelerator is not None:
        info.update(device=str(accelerator.device), processes=accelerator.num_processes,
                    distributed=str(accelerator.distributed_type), mixed_precision=str(accelerator.mixed_precision))
    return info


def write_environment(run_dir: Path, accelerator: Any = None) -> Path:
    """Write ``environment.json`` into ``run_dir`` (overwritten at each start, so a resume records its own)."""
    path = Path(run_dir) / ENVIRONMENT_NAME
    path.write_text(json.dumps(environment_info(accelerator), indent=1) + "\n", encoding="utf-8")
    return path
