"""What every benchmark under ``experiments/benchmarks`` records beside its figures."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def machine_info(
    threads: int, load_start: float, load_end: float, device: torch.device | None = None
) -> dict[str, Any]:
    """The machine a figure was measured on, with the load average before and after the run."""
    info = {
        "cpus": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": load_start,
        "load_average_end": load_end,
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(path: Path | None, results: dict[str, Any]) -> None:
    """``results`` as JSON at ``path`` (nothing when None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s", path)
