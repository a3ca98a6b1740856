"""The committed Ray cluster-launcher file, prepared and validated by Ray's own code (no cluster started)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("ray.autoscaler")


def _prepared(worker_ips: list[str]) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "configs" / "ray" / "cluster.yaml").read_text())
    config["provider"]["worker_ips"] = worker_ips
    prepared = prepare_config(config)  # what `ray up` / `ray submit` do first (local provider: prepare_local)
    validate_config(prepared)  # Ray's JSON schema and consistency checks
    return prepared


def test_every_listed_worker_joins_the_cluster():
    prepared = _prepared(["10.0.0.11", "10.0.0.12"])
    assert prepared["max_workers"] == 2
    # the local provider has one node type, shared by the head and the workers
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == 2 and node_type["max_workers"] == 2


def test_a_head_only_cluster_validates():
    assert _prepared([])["max_workers"] == 0
