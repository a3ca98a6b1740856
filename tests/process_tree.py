"""Test helpers for torchrun jobs: kill one whole (agent and workers), for the elastic-restart tests;
run several launchers of one job side by side, as the "nodes" of the multi-node tests."""
import os
import signal
import subprocess
from pathlib import Path


def children() -> dict[int, list[int]]:
    """{pid: its child pids} of every process now running (read from /proc)."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            found.setdefault(ppid, []).append(int(entry.name))
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before their children."""
    below, found, todo = children(), [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(below.get(found[-1], []))
    return found


def kill_job(agent_pid: int) -> None:
    """SIGKILL the torchrun agent and every process below it at once. torchrun starts each worker in a
    session of its own, so killing the agent's process group would leave the workers running (orphans)."""
    for pid in tree(agent_pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_nodes(command: list[str], env: dict, count: int = 2, timeout: float = 300, cwd=None) -> list[str]:
    """Start ``count`` copies of one launcher command (each a "node" of one rendezvous), wait for all,
    kill any left on a timeout, assert that every one exited 0 (the logs' tails in the message) and
    return their combined stdout/stderr."""
    nodes = [subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(count)]
    try:
        logs = [node.communicate(timeout=timeout)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0] * count, "\n".join(log[-3000:] for log in logs)
    return logs
