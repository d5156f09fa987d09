"""The `neardup enroll` / `neardup check` commands and tools/import_seed_db.py against a running service."""

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.media import verification
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.store import Store
from tests.conftest import IMAGES, mosaic, reencoded, wait_for

ROOT = Path(__file__).parent.parent
FAST = ("--enroll-views", "1", "--check-views", "1")


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=180, cwd=ROOT)


@pytest.fixture
def service(start_service):
    return start_service(*FAST)


def test_enroll_a_folder_then_check_images(service, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("gnome-adwaita.jpg", "gnome-wood.jpg", "stamp-animals-mammals-cats-lion.jpg"):
        shutil.copy(IMAGES / name, folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    server = f"127.0.0.1:{service.port}"

    enrolled = run("-m", "service.cli", "enroll", str(folder), "--server", server)
    assert enrolled.returncode == 1  # one file failed
    assert "3 enrolled, 0 updated, 0 unchanged, 1 failed, 1 skipped" in enrolled.stdout  # each file once
    assert f"failed: {folder / 'broken.jpg'}: image is not in a supported format" in enrolled.stderr
    assert f"not images, skipped: 1 file ({folder / 'notes.txt'})" in enrolled.stderr

    copy = tmp_path / "copy.jpg"
    copy.write_bytes(reencoded((folder / "gnome-wood.jpg").read_bytes(), quality=85))
    checked = run("-m", "service.cli", "check", str(copy), str(IMAGES / "gnome-truchet.jpg"), "--server", server)
    assert checked.returncode == 0
    first, second = checked.stdout.splitlines()
    assert first.startswith(f"{copy}: DUPLICATE of {folder / 'gnome-wood.jpg'} (score 0.")
    assert "by the margin rule; similarity 0.9" in first
    assert second.startswith(f"{IMAGES / 'gnome-truchet.jpg'}: new; nearest")

    as_json = run("-m", "service.cli", "check", str(folder / "gnome-adwaita.jpg"), "--json", "--server", server)
    [answer] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert answer["is_duplicate"] and answer["identical"]  # the proto's names, as grpcurl prints them
    assert answer["matches"][0]["key"] == str(folder / "gnome-adwaita.jpg")


def test_check_reports_an_unreadable_file_and_a_bad_image(service, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    checked = run(
        "-m", "service.cli", "check", str(bad), str(tmp_path / "absent.jpg"), "--json", "--server",
        f"127.0.0.1:{service.port}",
    )  # fmt: skip
    assert checked.returncode == 1
    answers = [json.loads(line) for line in checked.stdout.splitlines()]
    assert answers[0]["error"].startswith("INVALID_ARGUMENT: image is not in a supported format")
    assert "No such file" in answers[1]["error"]


def test_import_a_seed_database(service, tmp_path):
    seed = tmp_path / "seed"
    (seed / "images").mkdir(parents=True)
    listed = ["images/gnome-symbolic.jpg", "images/portrait-portraits-monsters-falcon.jpg", "images/gone.jpg"]
    for line in listed[:2]:
        shutil.copy(IMAGES / Path(line).name, seed / line)
    (seed / "image_list.txt").write_text("\n".join(listed) + "\n")
    rng = np.random.default_rng(0)
    np.savez(seed / "hash_database.npz", feats=rng.normal(size=(3, 2048)), ths=rng.uniform(size=3))

    imported = run(
        "-m", "tools.import_seed_db", "--database", str(seed / "hash_database.npz"), "--list",
        str(seed / "image_list.txt"), "--server", f"127.0.0.1:{service.port}",
    )  # fmt: skip
    assert imported.returncode == 1, imported.stderr
    assert "cannot be reused" in imported.stdout
    assert "2 enrolled" in imported.stdout and "1 failed" in imported.stdout
    assert "failed: images/gone.jpg: cannot read" in imported.stdout
    reply = service.stub.Check(pb.CheckRequest(image=(seed / listed[0]).read_bytes()), timeout=30)
    assert reply.identical and reply.matches[0].key == listed[0]


def test_stats_health_and_the_index_commands(service, tmp_path):
    server = ("--server", f"127.0.0.1:{service.port}")
    one = run("-m", "service.cli", "enroll", str(IMAGES / "gnome-wood.jpg"), *server)
    assert one.returncode == 0 and "1 enrolled" in one.stdout
    listing = tmp_path / "list.txt"
    listing.write_text(f"{IMAGES / 'gnome-wood.jpg'}\n{IMAGES / 'gnome-adwaita.jpg'}\n")
    listed = run("-m", "service.cli", "enroll", str(listing), *server)
    assert listed.returncode == 0 and "1 enrolled, 0 updated, 1 unchanged" in listed.stdout

    stats = {name: str(value) for name, value in json.loads(run("-m", "service.cli", "stats", *server).stdout).items()}
    assert (stats["records"], stats["unindexed_records"], stats["index_generation"]) == ("2", "2", "0")
    healthy = run("-m", "service.cli", "health", *server)
    assert healthy.returncode == 0 and healthy.stdout.strip().endswith("SERVING")
    unreachable = run("-m", "service.cli", "health", "--server", "127.0.0.1:9")
    assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr

    data_dir = service.data_dir
    rebuilt = run("-m", "service.cli", "index", "rebuild", "--data-dir", str(data_dir), "--quiet", "--nice", "0")
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("index generation 1: 2 records")
    reloaded = run("-m", "service.cli", "index", "reload", *server)
    assert reloaded.returncode == 0 and reloaded.stdout.startswith("index generation 1")
    stats = {name: str(value) for name, value in json.loads(run("-m", "service.cli", "stats", *server).stdout).items()}
    assert (stats["index_generation"], stats["index_size"], stats["unindexed_records"]) == ("1", "2", "0")
    refused = run("-m", "service.cli", "index", "rebuild", "--data-dir", str(data_dir), "--keep", "0")
    assert refused.returncode == 2 and "must be at least 1" in refused.stderr


def test_a_new_users_mistakes_are_one_line_each(tmp_path, start_service):
    service = start_service(*FAST)
    server = f"127.0.0.1:{service.port}"
    empty = run("-m", "service.cli", "check", str(IMAGES / "gnome-wood.jpg"), "--server", server)
    assert (empty.returncode, empty.stdout.strip()) == (0, f"{IMAGES / 'gnome-wood.jpg'}: new (nothing enrolled)")
    one = run("-m", "service.cli", "enroll", str(IMAGES / "gnome-wood.jpg"), "--server", server)
    assert one.returncode == 0 and "1 enrolled" in one.stdout
    missing = run("-m", "service.cli", "enroll", str(tmp_path / "nowhere"), "--server", server)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"neardup enroll: {tmp_path / 'nowhere'}: No such file or directory"
    service.stop()
    for command in (["enroll", str(IMAGES)], ["stats"], ["index", "reload"]):
        stopped = run("-m", "service.cli", *command, "--server", server)
        assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr
        [said] = [line for line in stopped.stderr.splitlines() if line and not line.startswith(("enrolling:", "not "))]
        assert said.startswith(f"neardup {command[0]}: {server}: UNAVAILABLE: "), said


def test_backup_while_an_enroll_stream_runs(tmp_path, start_service):
    data_dir = tmp_path / "data"
    service = start_service(*FAST, data_dir=data_dir)
    before = {f"b/{i}": mosaic(1200 + i) for i in range(20)}
    list(service.stub.Enroll(iter(pb.EnrollRequest(key=k, image=v) for k, v in before.items()), timeout=120))
    assert run("-m", "service.cli", "index", "rebuild", "--data-dir", str(data_dir), "--quiet").returncode == 0
    wait_for(lambda: service.stub.Stats(pb.StatsRequest(), timeout=5).index_generation == 1, 20, "generation 1")

    def more():
        for i in range(60):
            time.sleep(0.02)
            yield pb.EnrollRequest(key=f"during/{i}", image=mosaic(1300 + i))

    streaming = threading.Thread(target=lambda: list(service.stub.Enroll(more(), timeout=120)))
    streaming.start()
    time.sleep(0.3)
    copied = run("-m", "service.cli", "backup", str(tmp_path / "copy"), "--data-dir", str(data_dir))
    streaming.join(120)
    assert copied.returncode == 0, copied.stderr
    assert "index generation 1" in copied.stdout
    service.stop()

    restored = start_service(*FAST, data_dir=tmp_path / "copy")
    stats = restored.stub.Stats(pb.StatsRequest(), timeout=10)
    assert stats.index_generation == 1 and stats.records >= len(before)
    for key, image in list(before.items())[::5]:
        assert restored.stub.Check(pb.CheckRequest(image=reencoded(image)), timeout=30).matches[0].key == key
    again = run("-m", "service.cli", "backup", str(tmp_path / "copy"), "--data-dir", str(data_dir))
    assert again.returncode == 1 and "is not empty" in again.stderr


def test_reference_points_stored_at_enrolment_outlast_a_restart_a_rebuild_and_a_backup(tmp_path, start_service):
    """What verification compares a query with is stored once, at enrolment (the reference and its
    keypoints: media/verification.py), and kept by what ops do to a data directory."""
    data_dir = tmp_path / "data"
    service = start_service(*FAST, data_dir=data_dir)
    images = {f"p/{i}": mosaic(1400 + i) for i in range(4)}
    list(service.stub.Enroll(iter(pb.EnrollRequest(key=k, image=v) for k, v in images.items()), timeout=120))
    service.stop()
    assert run("-m", "service.cli", "index", "rebuild", "--data-dir", str(data_dir), "--quiet").returncode == 0
    copied = run("-m", "service.cli", "backup", str(tmp_path / "copy"), "--data-dir", str(data_dir))
    assert copied.returncode == 0, copied.stderr
    for folder in (data_dir, tmp_path / "copy"):
        store = Store(folder, readonly=True)
        try:
            with store.read() as view:
                for key in images:
                    id_ = view.by_key(key).id
                    points = view.reference_points(id_)
                    assert len(points) > 5 and points == verification.reference_points(view.reference(id_))
        finally:
            store.close()
    restarted = start_service(*FAST, data_dir=tmp_path / "copy")
    for key, image in images.items():
        reply = restarted.stub.Check(pb.CheckRequest(image=reencoded(image)), timeout=30)
        assert reply.is_duplicate and reply.matches[0].key == key


def test_enroll_counts_each_file_once_and_goes_on_past_one_too_large(service, tmp_path):
    """A file over what the service takes in one request is named with the limit; the rest are enrolled."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("gnome-adwaita.jpg", "gnome-wood.jpg"):
        shutil.copy(IMAGES / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    (folder / "huge.png").write_bytes(b"\x89PNG" + bytes(33 * 2**20))  # over the default 32 MiB a request carries
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    enrolled = run("-m", "service.cli", "enroll", str(folder), "--server", f"127.0.0.1:{service.port}")
    assert enrolled.returncode == 1 and "Traceback" not in enrolled.stderr, enrolled.stderr
    assert enrolled.stdout.strip().endswith("2 enrolled, 0 updated, 0 unchanged, 2 failed, 1 skipped")
    assert f"failed: {folder / 'huge.png'}: too large: 33.0 MiB, over the 32.0 MiB" in enrolled.stderr
    assert "--max-request-bytes" in enrolled.stderr
    assert f"not images, skipped: 1 file ({folder / 'phone.heic'})" in enrolled.stderr
    assert service.stub.Stats(pb.StatsRequest(), timeout=10).records == 2


def test_enroll_says_in_one_line_when_there_is_nothing_to_enrol(service, tmp_path):
    server = ("--server", f"127.0.0.1:{service.port}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "unsupported").mkdir()
    (tmp_path / "unsupported" / "a.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "photo.avif").write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00")
    (tmp_path / "comments.txt").write_text("# only a comment\n\n")
    said = {
        "empty": f"neardup enroll: no images found in {tmp_path / 'empty'} (0 other files;",
        "unsupported": f"neardup enroll: no images found in {tmp_path / 'unsupported'} (1 other files;",
        "photo.avif": f"neardup enroll: {tmp_path / 'photo.avif'}: not a JPEG, PNG, WebP, GIF, BMP or TIFF image",
        "comments.txt": f"neardup enroll: {tmp_path / 'comments.txt'} lists no files",
    }
    for name, line in said.items():
        refused = run("-m", "service.cli", "enroll", str(tmp_path / name), *server)
        assert refused.returncode == 1 and refused.stderr.strip().startswith(line), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert service.stub.Stats(pb.StatsRequest(), timeout=10).records == 0


def test_a_list_of_files_is_read_relative_to_itself_and_skips_comments(service, tmp_path):
    listing = tmp_path / "lists" / "photos.txt"
    (tmp_path / "lists" / "photos").mkdir(parents=True)
    shutil.copy(IMAGES / "gnome-wood.jpg", tmp_path / "lists" / "photos" / "wood.jpg")
    commented = f"  # {IMAGES / 'gnome-adwaita.jpg'}"
    lines = ["# holiday photos", "photos/wood.jpg", "", commented, str(IMAGES / "gnome-truchet.jpg")]
    listing.write_text("\n".join(lines) + "\n")
    listed = run("-m", "service.cli", "enroll", str(listing), "--server", f"127.0.0.1:{service.port}")  # cwd: ROOT
    assert listed.returncode == 0 and "2 enrolled, 0 updated, 0 unchanged, 0 failed" in listed.stdout, listed.stderr
    wood = service.stub.Check(pb.CheckRequest(image=(IMAGES / "gnome-wood.jpg").read_bytes()), timeout=30)
    assert wood.identical and wood.matches[0].key == str(tmp_path / "lists" / "photos" / "wood.jpg")


def test_check_errors_go_to_stderr_and_json_has_no_infinity(service, tmp_path):
    server = ("--server", f"127.0.0.1:{service.port}")
    missing = run("-m", "service.cli", "check", str(tmp_path / "missing.jpg"), *server)
    assert missing.returncode == 1 and missing.stdout == ""
    path = tmp_path / "missing.jpg"
    assert missing.stderr.strip() == f"{path}: error: cannot read {path}: No such file or directory"
    empty = run("-m", "service.cli", "check", str(IMAGES / "gnome-wood.jpg"), "--json", *server)
    assert "Infinity" not in empty.stdout and "NaN" not in empty.stdout
    answer = json.loads(empty.stdout)
    assert answer["matches"] == [] and answer["score"] == 0 and answer["is_duplicate"] is False


def test_check_and_enroll_take_a_collection(service, tmp_path):
    server = ("--server", f"127.0.0.1:{service.port}")
    wood = str(IMAGES / "gnome-wood.jpg")
    assert run("-m", "service.cli", "enroll", wood, "--collection", "shop-a", *server).returncode == 0
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(reencoded((IMAGES / "gnome-wood.jpg").read_bytes(), quality=85))
    inside = run("-m", "service.cli", "check", str(copy), "--json", "--collection", "shop-a", *server)
    inside = json.loads(inside.stdout)
    assert inside["is_duplicate"] and inside["matches"][0]["collection"] == "shop-a"
    elsewhere = run("-m", "service.cli", "check", str(copy), "--json", "--collection", "shop-b", *server)
    assert json.loads(elsewhere.stdout)["matches"] == []


def test_a_token_needs_a_name():
    refused = run("-m", "service.cli", "token", "new", " ", "--roles", "check")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == "neardup token new: give the caller a name: it is logged for each of its calls"


def test_every_argument_of_every_command_is_explained():
    from service.cli import build_parser

    def commands(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, (*path, name))
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    unexplained = [(path, action.dest) for path, action in commands(build_parser()) if not action.help]
    assert unexplained == []
    check_help = " ".join(run("-m", "service.cli", "check", "--help").stdout.split())  # unwrapped
    assert "(default: 1)" in check_help and "(default: 127.0.0.1:50051)" in check_help


def test_build_background_from_a_folder(service, tmp_path):
    folder = tmp_path / "background"
    folder.mkdir()
    for name in ("gnome-adwaita.jpg", "gnome-truchet.jpg"):
        shutil.copy(IMAGES / name, folder / name)
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "d").mkdir()
    built = run("-m", "tools.build_background", "--images", str(folder), "--data-dir", str(tmp_path / "d"),
                "--server", f"127.0.0.1:{service.port}")  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("2 background features -> ") and (tmp_path / "d" / "background.npz").exists()
