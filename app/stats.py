"""Host and GPU statistics for /api/stats: load, CPU, memory, workspace disk, and the GPU sampler's latest reading."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from app import gpu


def memory() -> dict:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return {"total": fields["MemTotal"], "available": fields["MemAvailable"],
            "used": fields["MemTotal"] - fields["MemAvailable"]}


def owner(pid: int, engines: dict[int, str]) -> str | None:
    """The instance whose engine process is `pid` or one of its ancestors."""
    for _ in range(8):
        if pid in engines:
            return engines[pid]
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def foreign(pid: int) -> bool:
    """A pid from another pid namespace: NVML in a container reports the host's pids, unknown to /proc here."""
    return not Path(f"/proc/{pid}").exists()


def snapshot(workspace: Path, sampler: gpu.Sampler, engines: dict[int, str],
             holders: dict[int, str] | None = None) -> dict:
    """`engines`: engine pid -> instance; `holders`: GPU index -> the instance holding it alone, the owner of
    processes whose pids are foreign (the appliance in a container)."""
    holders = holders or {}
    disk = shutil.disk_usage(workspace)

    def instance(index: int, pid: int) -> str | None:
        return owner(pid, engines) or (holders.get(index) if foreign(pid) else None)

    gpus = []
    for g in sampler.latest:
        processes = [{**p, "instance": instance(g["index"], p["pid"])} for p in g["processes"]]
        gpus.append({**g, "processes": processes,
                     "instances": sorted({p["instance"] for p in processes} - {None})})
    return {
        "host": {"load": os.getloadavg(), "cpu_count": os.cpu_count(), "memory": memory(),
                 "disk": {"path": str(workspace), "total": disk.total, "used": disk.used, "free": disk.free}},
        "gpus": gpus,
        "gpu_reason": None if gpus else (gpu.reason() or "no GPU reading yet"),
    }
