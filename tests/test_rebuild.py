"""tools/rebuild_index.py against a running service: no failed call, nothing lost, bad files survived."""

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from service.proto.neardup.v1 import neardup_pb2 as pb
from tests.conftest import mosaic, reencoded, wait_for

ROOT = Path(__file__).parent.parent
FAST = ("--enroll-views", "1", "--check-views", "1")


def rebuild(data_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tools.rebuild_index", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def enroll(stub, first: int, count: int) -> dict[str, bytes]:
    images = {f"m{i}": mosaic(i) for i in range(first, first + count)}
    results = list(stub.Enroll(iter(pb.EnrollRequest(key=k, image=v) for k, v in images.items()), timeout=120))
    assert all(r.status == pb.EnrollResult.ENROLLED for r in results), results
    return images


def nearest(stub, image: bytes) -> str:
    return stub.Check(pb.CheckRequest(image=reencoded(image), top_k=1), timeout=30).matches[0].key


def stats(stub) -> pb.StatsResponse:
    return stub.Stats(pb.StatsRequest(), timeout=10)


class Traffic:
    """Background Check and Enroll calls, counting every failure."""

    def __init__(self, stub, images: dict[str, bytes], next_number: int):
        self.stub, self.images, self.next_number = stub, dict(images), next_number
        self.failures: list[str] = []
        self.calls = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._checks), threading.Thread(target=self._enrolments)]

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _checks(self) -> None:
        rng = random.Random(0)
        while not self.stop.is_set():
            key = rng.choice(list(self.images))
            try:
                found = nearest(self.stub, self.images[key])
                if found != key:
                    self.failures.append(f"Check of {key} found {found}")
            except grpc.RpcError as error:
                self.failures.append(f"Check of {key}: {error.code().name} {error.details()}")
            self.calls += 1

    def _enrolments(self) -> None:
        while not self.stop.is_set():
            key, image = f"m{self.next_number}", mosaic(self.next_number)
            try:
                [result] = self.stub.Enroll(iter([pb.EnrollRequest(key=key, image=image)]), timeout=30)
                if result.status != pb.EnrollResult.ENROLLED:
                    self.failures.append(f"Enroll of {key}: {result}")
                self.images[key] = image
            except grpc.RpcError as error:
                self.failures.append(f"Enroll of {key}: {error.code().name} {error.details()}")
            self.next_number += 1
            self.calls += 1


def test_rebuild_while_checking_and_enrolling(tmp_path, start_service):
    data_dir = tmp_path / "data"
    service = start_service(*FAST, data_dir=data_dir)
    images = enroll(service.stub, 0, 60)
    with Traffic(service.stub, images, next_number=60) as traffic:
        time.sleep(1)
        for generation in (1, 2):
            assert f"index generation {generation}" in rebuild(data_dir)
            wait_for(lambda g=generation: stats(service.stub).index_generation == g, 20, f"generation {generation}")
            time.sleep(1)
    assert traffic.failures == []
    assert traffic.calls > 20
    final = stats(service.stub)
    assert final.index_generation == 2
    assert final.records == len(traffic.images) == final.index_size + final.unindexed_records
    for key, image in traffic.images.items():
        assert nearest(service.stub, image) == key


def test_reload_on_sighup_and_on_request(tmp_path, start_service):
    data_dir = tmp_path / "data"
    service = start_service(*FAST, "--index-poll-s", "3600", data_dir=data_dir)
    images = enroll(service.stub, 100, 10)
    rebuild(data_dir)
    time.sleep(1)
    assert stats(service.stub).index_generation == 0  # no poll for an hour
    service.process.send_signal(signal.SIGHUP)
    wait_for(lambda: stats(service.stub).index_generation == 1, 20, "the reload on SIGHUP")
    enroll(service.stub, 110, 5)
    rebuild(data_dir)
    reply = service.stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=30)
    assert (reply.reloaded, reply.index_generation) == (True, 2)
    assert service.stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=30).reloaded is False
    current = stats(service.stub)
    assert (current.index_size, current.unindexed_records) == (15, 0)
    assert all(nearest(service.stub, image) == key for key, image in images.items())


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_index_does_not_take_the_service_down(tmp_path, start_service, damage):
    data_dir = tmp_path / "data"
    service = start_service(*FAST, data_dir=data_dir)
    images = enroll(service.stub, 200, 10)
    rebuild(data_dir)
    wait_for(lambda: stats(service.stub).index_generation == 1, 20, "generation 1")
    images |= enroll(service.stub, 210, 3)
    rebuild(data_dir)
    index_dir = data_dir / "index"
    newest = index_dir / json.loads((index_dir / "manifest.json").read_text())["file"]
    # The service may have loaded generation 2 already; damage it and name a generation 3 that is broken.
    manifest = json.loads((index_dir / "manifest.json").read_text())
    broken = index_dir / "index-3.usearch"
    if damage == "corrupt":
        broken.write_bytes(newest.read_bytes()[:64])
    (index_dir / "manifest.json").write_text(json.dumps(manifest | {"generation": 3, "file": broken.name}))
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.ReloadIndex(pb.ReloadIndexRequest(), timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "index-3.usearch" in raised.value.details() and "rebuild_index.py" in raised.value.details()
    assert stats(service.stub).index_generation in (1, 2)
    assert all(nearest(service.stub, image) == key for key, image in images.items())

    service.stop()
    restarted = start_service(*FAST, data_dir=data_dir)  # starts, and serves every record from memory
    assert stats(restarted.stub).index_generation == 0
    assert all(nearest(restarted.stub, image) == key for key, image in images.items())
    assert "no index snapshot loaded" in restarted.output()
