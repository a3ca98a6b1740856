"""A restarted torchrun worker group forms its gloo process group although the torchrun agent's store
still holds the keys of the attempt that died (dias_dist.dist: a fresh namespace per attempt).

The torchrun test reproduces the failure deterministically: the restarted rank 1 starts late, so the
restarted rank 0 looks up rank 1's address first. Without the namespace it finds the dead rank 1's
address (the agent keeps one store for the whole job) and its connect is refused or never answered."""
import datetime
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as tdist

from dias_dist.dist import attempt_epoch
from process_tree import kill_job

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = datetime.timedelta(seconds=60)

WORKER = r'''
import os, sys, time
import torch
from dias_dist import dist

restart, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
if restart == 1 and rank == 1:
    time.sleep(float(sys.argv[2]))  # the restarted rank 1 is late: rank 0 must wait for it, not dial the dead one
dist.init("gloo", "cpu")
total = dist.all_reduce_sum(torch.ones(1)).item()
if restart == 0 and rank == 1:
    os._exit(1)  # dies after its group formed: torchrun restarts the whole group
if restart == 1 and rank == 0:
    open(sys.argv[1], "w").write(f"{total:g}")
dist.teardown()
'''


def _epochs(port: int, delay_s: dict[int, float]) -> dict[int, int]:
    """attempt_epoch of ranks 0 and 1, each in a thread with a store client of its own, rank r starting
    ``delay_s[r]`` seconds late."""
    got: dict[int, int] = {}

    def rank(r: int) -> None:
        time.sleep(delay_s.get(r, 0.0))
        got[r] = attempt_epoch(tdist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=TIMEOUT), r, 2, TIMEOUT)

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return got


def test_every_rank_gets_a_new_epoch_although_the_store_holds_an_earlier_attempts_keys():
    server = tdist.TCPStore("127.0.0.1", 0, 2, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    assert _epochs(server.port, {}) == {0: 1, 1: 1}  # an earlier attempt; its keys stay in the store
    server.set("dias_dist/pg/join/1", "token-of-a-rank-that-died")  # a later rank 1 published a token, then died
    # the new rank 1 comes late: rank 0 first finds the old tokens, answers them and waits for the new one
    assert _epochs(server.port, {1: 0.5}) == {0: 2, 1: 2}
    assert _epochs(server.port, {0: 0.5}) == {0: 3, 1: 3}  # a late rank 0 finds the new token at once


def test_restarted_group_connects_when_the_new_rank_1_comes_late(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "allreduce.txt"
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                            "--max-restarts=1", str(tmp_path / "worker.py"), str(out), "3"],
                           env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = job.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # hung in gloo's connect (the old failure): end the agent and its workers
        kill_job(job.pid)
        log, _ = job.communicate()
        pytest.fail("the restarted group hung:\n" + log.decode(errors="replace")[-4000:])
    log = log.decode(errors="replace")
    assert job.returncode == 0, log[-4000:]
    assert out.read_text() == "2", log[-4000:]  # the restarted group's all-reduce saw both ranks
