"""Test helper: kill a torchrun job whole (agent and workers), for the elastic-restart tests."""
import os
import signal
from pathlib import Path


def kill_job(agent_pid: int) -> None:
    """SIGKILL the torchrun agent and every process below it at once. torchrun starts each worker in a
    session of its own, so killing the agent's process group would leave the workers running (orphans)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [agent_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
