"""A Dask worker killed in the middle of a shard: the shard is run again elsewhere and the index is identical."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from denseflow.model.config import DataConfig, EncodeConfig, IndexConfig, PublishConfig, RunnerConfig
from denseflow.model.index.store import load_current

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Loaded into every worker process at start: the first document encode in the cluster kills its own process
# with os._exit (no exception, no cleanup: as an OOM kill or a lost node would), after the shard's input was
# read and the model loaded, before anything is written. Workers started after that (the nanny restarts
# the dead one) find the marker and encode normally. The patch goes on denseflow.model.encoder: Prefect ships
# the task's function by value, and its reference to ``encode`` is resolved by name when a worker unpickles it.
PRELOAD = """
import os
from pathlib import Path

import denseflow.model.encoder as encoder

MARKER = Path({marker!r})
# A preload can run twice in one process: keep the first original, never wrap the wrapper.
_encode = encoder.__dict__.setdefault("_unpatched_encode", encoder.encode)


def encode(model, texts, role, *args, **kwargs):
    if role == "document" and not MARKER.exists():
        MARKER.write_text(str(os.getpid()))
        os._exit(1)
    return _encode(model, texts, role, *args, **kwargs)


encoder.encode = encode
"""


def make_config(workspace: Path, model_dir: Path, beir_dir: Path, runner: RunnerConfig) -> PublishConfig:
    return PublishConfig(
        workspace=workspace,
        model=str(model_dir),
        data=DataConfig(path=beir_dir),
        encode=EncodeConfig(shard_size=10, batch_size=8, precision="fp32"),
        index=IndexConfig(name="tiny"),
        runner=runner,
    )


def test_worker_killed_mid_shard_is_retried_and_the_index_is_identical(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    from dask.distributed import LocalCluster

    from denseflow.flows.publish_index import run_publish

    local = run_publish(make_config(tmp_path / "local", tiny_model_dir, tiny_beir_dir, RunnerConfig()))

    marker = tmp_path / "killed-worker.pid"
    preload = tmp_path / "kill_first_encode.py"
    preload.write_text(PRELOAD.format(marker=str(marker)))
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, preload=[str(preload)]
    ) as cluster:
        runner = RunnerConfig(kind="dask", dask_address=cluster.scheduler_address)
        dask = run_publish(make_config(tmp_path / "dask", tiny_model_dir, tiny_beir_dir, runner))

    killed = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # that worker process is gone: the shard it held finished somewhere else
    assert dask.shards == local.shards == 4
    assert dask.documents_encoded == local.documents_encoded == 36
    published, reference = (load_current(ws / "indexes", "tiny") for ws in (tmp_path / "dask", tmp_path / "local"))
    assert published.doc_ids == reference.doc_ids
    vectors = published.index.reconstruct_n(0, published.index.ntotal)
    np.testing.assert_allclose(vectors, reference.index.reconstruct_n(0, reference.index.ntotal), atol=1e-6)
    assert not list((tmp_path / "dask").rglob(".tmp-*"))  # the killed shard left no partial file behind
