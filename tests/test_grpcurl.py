"""The README's grpcurl example works: reflection and health are on, no proto file needed."""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import image_bytes

# Installed beside the test interpreter by the test extra.
GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


def grpcurl(service, *arguments: str, data: str | None = None) -> subprocess.CompletedProcess:
    command = [GRPCURL, "-plaintext", "-max-time", "60"]
    if data is not None:
        command += ["-d", "@"]
    command += [f"127.0.0.1:{service.port}", *arguments]
    return subprocess.run(command, input=data, capture_output=True, text=True, timeout=90)


def test_grpcurl_lists_the_service_through_reflection(service):
    listed = grpcurl(service, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"neardup.v1.NearDup", "grpc.health.v1.Health"} <= set(listed.stdout.split())


def test_grpcurl_hash_and_health(service):
    request = json.dumps({"image": base64.b64encode(image_bytes("gnome-adwaita.jpg")).decode(), "views": 10})
    hashed = grpcurl(service, "neardup.v1.NearDup/Hash", data=request)
    assert hashed.returncode == 0, hashed.stderr
    reply = json.loads(hashed.stdout)
    assert len(reply["feature"]) == 512 and reply["threshold"] > 0 and reply["model"] == "sscd"

    health = grpcurl(service, "grpc.health.v1.Health/Check", data='{"service": "neardup.v1.NearDup"}')
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_grpcurl_shows_the_reason_for_a_bad_image(service):
    bad = grpcurl(service, "neardup.v1.NearDup/Hash", data=json.dumps({"image": base64.b64encode(b"nope").decode()}))
    assert bad.returncode != 0
    assert "InvalidArgument" in bad.stderr and "not in a supported format" in bad.stderr


def test_grpcurl_streams_checks_one_answer_per_request(service):
    names = ["gnome-adwaita.jpg", "gnome-wood.jpg", "gnome-truchet.jpg"]
    lines = [json.dumps({"image": base64.b64encode(image_bytes(name)).decode(), "top_k": 2}) for name in names]
    lines.insert(1, json.dumps({"image": base64.b64encode(b"nope").decode()}))
    streamed = grpcurl(service, "neardup.v1.NearDup/CheckStream", data="\n".join(lines))
    assert streamed.returncode == 0, streamed.stderr
    answers = [json.loads(chunk) for chunk in streamed.stdout.replace("}\n{", "}\0{").split("\0")]
    assert len(answers) == 4
    assert "not in a supported format" in answers[1]["error"]
    assert all("error" not in answer and "model" in answer for n, answer in enumerate(answers) if n != 1)


def test_grpcurl_collections_and_duplicate_groups(scratch_service):
    """The README's collection examples, as written there: enrol into a collection, check it, set
    its threshold, and list the duplicate groups."""
    image = base64.b64encode(image_bytes("gnome-wood.jpg")).decode()
    enrolled = grpcurl(scratch_service, "neardup.v1.NearDup/Enroll",
                       data=json.dumps({"collection": "shop-a", "key": "sku/1", "image": image}))  # fmt: skip
    assert enrolled.returncode == 0 and json.loads(enrolled.stdout)["status"] in ("ENROLLED", "UNCHANGED")
    checked = grpcurl(
        scratch_service, "neardup.v1.NearDup/Check", data=json.dumps({"collections": ["shop-a"], "image": image})
    )
    assert json.loads(checked.stdout)["matches"][0]["collection"] == "shop-a"
    chosen = grpcurl(scratch_service, "neardup.v1.NearDup/SetCollection",
                     data='{"collection": "shop-a", "rule": "margin", "threshold": 0.6}')  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["own_settings"] is True, chosen.stdout
    groups = grpcurl(scratch_service, "neardup.v1.NearDup/FindDuplicates", data="{}")
    assert groups.returncode == 0 and "records_total" in groups.stdout
