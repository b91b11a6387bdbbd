"""Files written so that nothing the user made is lost: a reader, or a process killed mid-write, sees
the old file or the new one, never a part (write to a fsynced temporary sibling, then rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` via a fsynced temporary sibling and a rename, so a reader (or a process killed
    mid-write) sees the old file or the new one, never a part; temporaries of writers that died
    before their rename are removed here."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    remove_dead_parts(path)


def remove_dead_parts(path: Path) -> None:
    """Delete ``.<name>.<pid>.part`` siblings of ``path`` whose writing process no longer runs."""
    for part in path.parent.glob(f".{path.name}.*.part"):
        pid = part.name[len(path.name) + 2:-len(".part")]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            part.unlink()
        except OSError:
            pass


def pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there would terminate the process: keep the part
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False).encode())


def atomic_write_h5ad(path: Path, adata) -> None:
    """``adata.write_h5ad`` to a temporary name, then rename: a reader never sees half a table."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    adata.write_h5ad(tmp)
    os.replace(tmp, path)
    remove_dead_parts(path)


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: an interrupted save leaves the old file."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    remove_dead_parts(path)
