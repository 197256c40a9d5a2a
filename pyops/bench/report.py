"""Output: the machine and build a run measured, its tables, and the JSON result file."""

from __future__ import annotations

import datetime
import json
import math
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import mobilefuse


def device_name(device: torch.device) -> str:
    """A readable name of ``device``: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_slug(device: torch.device) -> str:
    """``device_name`` lowercased with runs of non-alphanumerics as '-', CPUs prefixed 'cpu-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "unknown"
    return slug if device.type == "cuda" else f"cpu-{slug}"


def result_path(out_dir: Path, device: torch.device) -> Path:
    """``<out_dir>/<device slug>-<YYYY-MM-DD>.json``."""
    return Path(out_dir) / f"{device_slug(device)}-{datetime.date.today().isoformat()}.json"


def _git(*args: str, cwd: Path | None = None) -> str | None:
    cwd = cwd or Path(mobilefuse.__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state() -> dict[str, Any]:
    """The commit the package's source tree is at, and whether the tree differs from it.

    Untracked files count (a new module changes what runs); result files do not.
    """
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD") if top else None
    status = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results",
                  cwd=Path(top)) if commit else None
    return {"git_commit": commit or None,
            "git_dirty": None if status is None else bool(status),
            "extension_older_than_csrc": _extension_stale(Path(top)) if top else None}


def _extension_stale(top: Path) -> bool | None:
    # An editable install runs the last built .so: C++ edits since then are not measured.
    so = getattr(sys.modules.get("mobilefuse._C"), "__file__", None)
    sources = [p for p in (top / "csrc").rglob("*") if p.is_file()]
    if so is None or not sources:
        return None
    return max(p.stat().st_mtime for p in sources) > Path(so).stat().st_mtime


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions, build and threads: what a result file needs to be reproduced."""
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch_version": torch.__version__,
        "triton_version": triton_version,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "mobilefuse_version": mobilefuse.__version__,
        "build_info": mobilefuse.build_info(),
        "backends": mobilefuse.backend_status(),
        **git_state(),
        "threads": torch.get_num_threads(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def render_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with right-aligned numeric columns."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if _numeric(str(c)) else str(c).ljust(w)
                         for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in rows)])


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?[x%]?", cell))


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table with ``rich`` when it is installed, else as plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(render_table(title, headers, rows), flush=True)
        return
    table = Table(title=title)
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console().print(table)


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or '-' when missing or not finite."""
    if value is None or not math.isfinite(value):
        return "-"
    return format(value, spec)


def _finite(value: Any) -> Any:
    # Strict JSON has no NaN or Infinity: a missing number is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented strict JSON, creating the folder; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n")
    return path
