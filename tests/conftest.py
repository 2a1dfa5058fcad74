"""Shared fixtures: one local Ray cluster and one S3-protocol server (moto,
on 127.0.0.1) per test session."""

import logging
import os
import socket
import sys

import pytest

# The authors' reference step (tests/authors_cgc.py) is imported by name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Credentials for the local S3 server, inherited by the Ray processes the tests
# start; and no instance-metadata lookups (network traffic stays on 127.0.0.1).
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")


def pytest_collection_modifyitems(items):
    """`cluster`: the tests that start or join a Ray cluster (through the
    session's cluster fixture, or one of their own): `-m "not cluster"` runs the rest."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.cluster)


def jpeg(path, size=(12, 8)):
    """A small solid JPEG at `path`, folders made (hand-written raw layouts)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 90)).save(path, "JPEG")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A 2-CPU local Ray cluster shared by the tests (starting one takes 5-15 s here)."""
    import ray

    metrics_port = free_port()
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False,
             _metrics_export_port=metrics_port, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield {"metrics_port": metrics_port}
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto's standalone server) on 127.0.0.1; yields the
    StorageOptions production code uses to reach it, and a boto3 client for setup."""
    import boto3
    from moto.server import ThreadedMotoServer

    from cgc_ray.data.storage import StorageOptions

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = StorageOptions(endpoint_url=endpoint, region="us-east-1", access_key="testing", secret_key="testing")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    yield options, client
    server.stop()


def upload_tree(client, local_root, bucket, prefix, only=None):
    """Copy a local folder into the bucket (boto3: setup only; reads go through pyarrow)."""
    from pathlib import Path

    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for path in sorted(Path(local_root).rglob("*")):
        rel = path.relative_to(local_root).as_posix()
        if path.is_file() and (only is None or only(rel)):
            client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=path.read_bytes())
