"""Authentication, roles and TLS against the real service, with certificates made at test time."""

import base64
import json
import signal
import subprocess
import sys

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.auth import new_token
from service.api.channels import Credentials, channel
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from tests.conftest import mosaic, reencoded, wait_for
from tests.test_grpcurl import GRPCURL

FAST = ("--enroll-views", "1", "--check-views", "1")
ROLE_OF = {
    "Hash": "check",
    "Check": "check",
    "CheckStream": "check",
    "Stats": "check",
    "Enroll": "enroll",
    "Delete": "enroll",
}
ROLE_OF.update(Dismiss="enroll", ListDismissals="enroll", RemoveDismissal="enroll")
ROLE_OF.update(ReloadIndex="admin", SetCollection="admin", FindDuplicates="admin")
IMAGE = mosaic(4242)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A server CA and certificate for 127.0.0.1, and a separate CA for client certificates."""
    folder = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("search-api.clients.example")
    files = {
        "ca": server_ca.cert_pem,
        "cert": server.cert_chain_pems[0],
        "key": server.private_key_pem,
        "client_ca": client_ca.cert_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(folder / f"{name}.pem"))
    return {name: str(folder / f"{name}.pem") for name in files}


def write_tokens(path, names_and_roles: dict[str, list[str]], scopes: dict[str, list[str]] | None = None) -> dict:
    """The token file for these callers (each limited to its `scopes` entry, if any); tokens by name."""
    tokens, entries = {}, []
    for name, roles in names_and_roles.items():
        tokens[name], entry = new_token(name, roles, (scopes or {}).get(name))
        entries.append(entry)
    path.write_text(json.dumps({"tokens": entries}))
    return tokens


@pytest.fixture(scope="module")
def secured(tmp_path_factory, pki):
    """One service with a token file and server TLS; the tokens by name."""
    from tools.service_process import RunningService

    folder = tmp_path_factory.mktemp("secured")
    token_file = folder / "tokens.json"
    everything = ["check", "enroll", "admin"]
    callers = {"searcher": ["check"], "ingest": ["enroll"], "operator": ["admin"], "all": ["check", "enroll"]}
    callers.update({"owner": everything, "team-a": everything})
    tokens = write_tokens(token_file, callers, scopes={"team-a": ["team-a"]})
    flags = ["--auth-tokens", str(token_file), "--tls-cert", pki["cert"], "--tls-key", pki["key"], *FAST]
    running = RunningService(folder / "data", *flags, credentials=Credentials(tls_ca=pki["ca"]))
    try:
        yield running.wait_serving(), tokens, token_file
    finally:
        running.stop()


def stub_for(service, pki, token: str = "") -> pb_grpc.NearDupStub:
    return pb_grpc.NearDupStub(channel(f"127.0.0.1:{service.port}", Credentials(token=token, tls_ca=pki["ca"])))


CALLS = {
    "Hash": lambda s: s.Hash(pb.HashRequest(image=IMAGE), timeout=30),
    "Check": lambda s: s.Check(pb.CheckRequest(image=IMAGE), timeout=30),
    "CheckStream": lambda s: list(s.CheckStream(iter([pb.CheckRequest(image=IMAGE)]), timeout=30)),
    "Stats": lambda s: s.Stats(pb.StatsRequest(), timeout=30),
    "Enroll": lambda s: list(s.Enroll(iter([pb.EnrollRequest(key="matrix/one", image=IMAGE)]), timeout=30)),
    "Delete": lambda s: s.Delete(pb.DeleteRequest(key="matrix/absent"), timeout=30),
    "ReloadIndex": lambda s: s.ReloadIndex(pb.ReloadIndexRequest(), timeout=30),
    "Dismiss": lambda s: s.Dismiss(pb.DismissRequest(image=IMAGE, key="matrix/absent"), timeout=30),
    "ListDismissals": lambda s: s.ListDismissals(pb.ListDismissalsRequest(), timeout=30),
    "RemoveDismissal": lambda s: s.RemoveDismissal(pb.RemoveDismissalRequest(id=987654), timeout=30),
    "SetCollection": lambda s: s.SetCollection(
        pb.SetCollectionRequest(collection="matrix", rule="margin", threshold=0.5), timeout=30
    ),
    "FindDuplicates": lambda s: list(s.FindDuplicates(pb.FindDuplicatesRequest(), timeout=30)),
}


def status(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_the_role_matrix_covers_every_rpc():
    served = pb.DESCRIPTOR.services_by_name["NearDup"].methods_by_name
    assert set(CALLS) == set(ROLE_OF) == set(served)


@pytest.mark.parametrize("caller", ["no token", "unknown token", "searcher", "ingest", "operator"])
def test_the_role_matrix(secured, pki, caller):
    service, tokens, _ = secured
    token = {"no token": "", "unknown token": "not-a-token-of-ours"}.get(caller, tokens.get(caller, ""))
    roles = {"searcher": {"check"}, "ingest": {"enroll"}, "operator": {"admin"}}.get(caller, set())
    stub = stub_for(service, pki, token)
    for method, call in CALLS.items():
        code = status(lambda call=call: call(stub))
        if not token or caller == "unknown token":
            expected = {grpc.StatusCode.UNAUTHENTICATED}
        elif ROLE_OF[method] in roles:
            # Allowed: answered by the method itself (absent keys, a reload with no index).
            expected = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
        else:
            expected = {grpc.StatusCode.PERMISSION_DENIED}
        assert code in expected, f"{caller} {method}: {code}"
    # Health stays open to everyone, orchestrator probes included.
    health = health_pb2_grpc.HealthStub(channel(f"127.0.0.1:{service.port}", Credentials(tls_ca=pki["ca"])))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING


def test_a_refused_callers_messages_are_not_taken_in(secured, pki):
    """Sixteen callers without a token send 20 MB Checks at once: each is refused UNAUTHENTICATED,
    and the service's peak memory grows by far less than they sent (each message used to be read
    whole before the refusal: 48 such callers of 30 MB took the service to 1.8 GB)."""
    from tools.service_process import peak_resident_mb, reset_peak_resident, resident_mb

    service, _, _ = secured
    pid = service.process.pid
    reset_peak_resident(pid)
    before = resident_mb(pid)
    large = pb.CheckRequest(image=bytes(20 * 2**20))
    calls = [stub_for(service, pki).Check.future(large, timeout=60) for _ in range(16)]
    assert [call.exception().code() for call in calls] == [grpc.StatusCode.UNAUTHENTICATED] * 16
    taken_in = peak_resident_mb(pid) - before
    assert taken_in < 60, f"{taken_in:.0f} MB taken in for 320 MB of refused messages"


def test_a_refused_enroll_or_delete_changes_nothing(secured, pki):
    service, tokens, _ = secured
    writer, reader = stub_for(service, pki, tokens["all"]), stub_for(service, pki, tokens["searcher"])
    [kept] = writer.Enroll(iter([pb.EnrollRequest(key="kept/1", image=mosaic(1))]), timeout=60)
    assert kept.status in (pb.EnrollResult.ENROLLED, pb.EnrollResult.UNCHANGED)
    before = reader.Stats(pb.StatsRequest(), timeout=10).records
    for stub in (reader, stub_for(service, pki), stub_for(service, pki, "forged")):
        assert status(lambda s=stub: list(s.Enroll(iter([pb.EnrollRequest(key="sneaky", image=mosaic(2))])))) in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert status(lambda s=stub: s.Delete(pb.DeleteRequest(key="kept/1"), timeout=10)) in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert reader.Stats(pb.StatsRequest(), timeout=10).records == before
    assert reader.Check(pb.CheckRequest(image=reencoded(mosaic(1))), timeout=30).matches[0].key == "kept/1"
    assert status(lambda: writer.Delete(pb.DeleteRequest(key="sneaky"), timeout=10)) == grpc.StatusCode.NOT_FOUND


def test_logs_name_the_caller_and_never_a_token(secured, pki):
    service, tokens, _ = secured
    stub = stub_for(service, pki, tokens["ingest"])
    assert status(lambda: stub.Delete(pb.DeleteRequest(key="logged/absent"), timeout=10)) == grpc.StatusCode.NOT_FOUND
    wait_for(lambda: " ingest]: Delete: NOT_FOUND" in service.output(), 10, "the caller's name in the log")
    assert not any(token in service.output() for token in tokens.values())


def test_a_plaintext_client_is_refused_by_a_tls_service(secured):
    service, tokens, _ = secured
    plain = pb_grpc.NearDupStub(channel(f"127.0.0.1:{service.port}", Credentials(token=tokens["searcher"])))
    assert status(lambda: plain.Stats(pb.StatsRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_tokens_rotate_on_sighup_without_a_restart(secured, pki):
    service, tokens, token_file = secured
    old = tokens["operator"]
    assert status(lambda: stub_for(service, pki, old).ReloadIndex(pb.ReloadIndexRequest(), timeout=10)) != (
        grpc.StatusCode.UNAUTHENTICATED
    )
    entries = json.loads(token_file.read_text())["tokens"]
    fresh, entry = new_token("operator", ["admin"])
    token_file.write_text(json.dumps({"tokens": [e for e in entries if e["name"] != "operator"] + [entry]}))
    service.process.send_signal(signal.SIGHUP)

    def rotated() -> bool:
        refused = status(lambda: stub_for(service, pki, old).Stats(pb.StatsRequest(), timeout=5))
        accepted = status(lambda: stub_for(service, pki, fresh).ReloadIndex(pb.ReloadIndexRequest(), timeout=5))
        return refused == grpc.StatusCode.UNAUTHENTICATED and accepted != grpc.StatusCode.UNAUTHENTICATED

    wait_for(rotated, 20, "the old operator token to stop working and the new one to work")
    tokens["operator"] = fresh
    searcher = stub_for(service, pki, tokens["searcher"])
    assert status(lambda: searcher.Stats(pb.StatsRequest(), timeout=5)) == grpc.StatusCode.OK  # others untouched


def test_grpcurl_with_a_token_and_tls(secured, pki):
    """The README's grpcurl example with auth on: reflection answers any valid token, so each role's
    own calls work through it without a proto file."""
    service, tokens, _ = secured
    base = [GRPCURL, "-cacert", pki["ca"], "-max-time", "60"]
    for name, method, request in (
        ("searcher", "Check", {"image": base64.b64encode(IMAGE).decode()}),
        ("ingest", "Enroll", {"key": "grpcurl/ingest", "image": base64.b64encode(IMAGE).decode()}),
        ("operator", "FindDuplicates", {}),
    ):
        header = ["-H", f"authorization: Bearer {tokens[name]}"]
        listed = subprocess.run([*base, *header, f"127.0.0.1:{service.port}", "list"], capture_output=True, text=True)
        assert listed.returncode == 0 and "neardup.v1.NearDup" in listed.stdout, (name, listed.stderr)
        command = [*base, *header, "-d", "@", f"127.0.0.1:{service.port}", f"neardup.v1.NearDup/{method}"]
        called = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True)
        assert called.returncode == 0 and called.stdout.strip().startswith("{"), (name, called.stderr)
    refused = subprocess.run([*base, f"127.0.0.1:{service.port}", "list"], capture_output=True, text=True)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path, pki, start_service):
    flags = ["--tls-cert", pki["cert"], "--tls-key", pki["key"], "--tls-client-ca", pki["client_ca"], *FAST]
    with_certificate = Credentials(tls_ca=pki["ca"], client_cert=pki["client_cert"], client_key=pki["client_key"])
    service = start_service(*flags, credentials=with_certificate)
    address = f"127.0.0.1:{service.port}"
    stats = pb_grpc.NearDupStub(channel(address, with_certificate)).Stats(pb.StatsRequest(), timeout=10)
    assert stats.records == 0
    without = pb_grpc.NearDupStub(channel(address, Credentials(tls_ca=pki["ca"])))
    assert status(lambda: without.Stats(pb.StatsRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_a_non_loopback_host_without_auth_is_refused_with_what_to_add(tmp_path):
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "add --auth-tokens FILE" in refused.stderr and "--insecure" in refused.stderr
    assert not (tmp_path / "store.lmdb").exists()  # nothing was opened


def test_certificates_that_do_not_load_are_refused_on_sighup_and_the_old_ones_stay(tmp_path, pki, start_service):
    """A garbage certificate, then a certificate with another key's pair: each reload is logged as
    refused with why, and clients go on connecting with the certificate in use."""
    import shutil

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki["cert"], cert)
    shutil.copy(pki["key"], key)
    service = start_service("--tls-cert", str(cert), "--tls-key", str(key), *FAST,
                            credentials=Credentials(tls_ca=pki["ca"]))  # fmt: skip
    other = trustme.CA().issue_cert("127.0.0.1")  # a real certificate, but not for this key
    for number, bad in enumerate([b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
                                  other.cert_chain_pems[0].bytes()], 1):  # fmt: skip
        cert.write_bytes(bad)
        service.process.send_signal(signal.SIGHUP)
        wait_for(lambda n=number: service.output().count("TLS certificates not reloaded") == n, 20, "the refusal")
        assert "TLS certificates reloaded" not in service.output()
        fresh = pb_grpc.NearDupStub(channel(f"127.0.0.1:{service.port}", Credentials(tls_ca=pki["ca"])))
        assert fresh.Stats(pb.StatsRequest(), timeout=10).records == 0  # a new handshake, the old certificate


def test_an_empty_token_list_is_refused_and_a_loose_token_file_is_warned_of(secured, pki):
    service, tokens, token_file = secured
    kept = token_file.read_text()
    searcher = stub_for(service, pki, tokens["searcher"])
    token_file.write_text('{"tokens": []}')
    service.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "'tokens' is empty: every caller would be refused" in service.output(), 20, "the refusal")
    assert status(lambda: searcher.Stats(pb.StatsRequest(), timeout=5)) == grpc.StatusCode.OK  # the old ones stay
    token_file.write_text(kept)
    token_file.chmod(0o666)
    try:
        service.process.send_signal(signal.SIGHUP)
        wait_for(lambda: f"the token file {token_file} can be written by others (mode 666)" in service.output(), 20,
                 "the warning")  # fmt: skip
    finally:
        token_file.chmod(0o600)
    assert status(lambda: searcher.Stats(pb.StatsRequest(), timeout=5)) == grpc.StatusCode.OK


def test_a_token_limited_to_its_collections_never_reaches_another(secured, pki):
    """A token with every role but `"collections": ["team-a"]` beside team-b's record: it cannot
    find it (not even by naming team-b), overwrite, delete, dismiss against, configure, group or
    list it, while its own collection works as any token's."""
    service, tokens, _ = secured
    owner, team_a = stub_for(service, pki, tokens["owner"]), stub_for(service, pki, tokens["team-a"])
    theirs, ours = mosaic(7001), mosaic(7002)
    enrolled = owner.Enroll(iter([pb.EnrollRequest(key="plan", image=theirs, collection="team-b",
                                                   metadata={"owner": "team-b"})]), timeout=60)  # fmt: skip
    assert [result.status for result in enrolled] == [pb.EnrollResult.ENROLLED]
    dismissal = owner.Dismiss(pb.DismissRequest(key="plan", collection="team-b", image=mosaic(7003)), timeout=30)
    [mine] = team_a.Enroll(iter([pb.EnrollRequest(key="mine", image=ours, collection="team-a")]), timeout=60)
    assert mine.status == pb.EnrollResult.ENROLLED

    copy_of_theirs = reencoded(theirs)
    assert owner.Check(pb.CheckRequest(image=copy_of_theirs), timeout=30).matches[0].collection == "team-b"
    answer = team_a.Check(pb.CheckRequest(image=copy_of_theirs, top_k=5), timeout=30)
    assert not answer.is_duplicate and all(match.collection == "team-a" for match in answer.matches)
    assert team_a.Check(pb.CheckRequest(image=reencoded(ours)), timeout=30).matches[0].key == "mine"

    denied = grpc.StatusCode.PERMISSION_DENIED
    named_b = pb.CheckRequest(image=copy_of_theirs, collections=["team-a", "team-b"])
    assert status(lambda: team_a.Check(named_b, timeout=30)) == denied
    as_if_theirs = pb.DismissRequest(key="mine", collection="team-a", query_key="plan", query_collection="team-b")
    [streamed] = team_a.CheckStream(iter([named_b]), timeout=30)
    assert streamed.error.startswith("PERMISSION_DENIED") and not streamed.matches
    [overwrite] = team_a.Enroll(iter([pb.EnrollRequest(key="plan", image=ours, collection="team-b")]), timeout=60)
    assert overwrite.status == pb.EnrollResult.INVALID and "does not reach collection 'team-b'" in overwrite.error
    for call in (
        lambda: team_a.Delete(pb.DeleteRequest(key="plan", collection="team-b"), timeout=10),
        lambda: team_a.Dismiss(pb.DismissRequest(key="plan", collection="team-b", image=ours), timeout=30),
        lambda: team_a.Dismiss(as_if_theirs, timeout=30),
        lambda: team_a.ListDismissals(pb.ListDismissalsRequest(key="plan", collection="team-b"), timeout=10),
        lambda: team_a.SetCollection(pb.SetCollectionRequest(collection="team-b", threshold=-1.0), timeout=10),
        lambda: list(team_a.FindDuplicates(pb.FindDuplicatesRequest(collection="team-b"), timeout=30)),
        lambda: list(team_a.FindDuplicates(pb.FindDuplicatesRequest(), timeout=30)),  # every collection
    ):
        assert status(call) == denied
    assert status(lambda: team_a.RemoveDismissal(pb.RemoveDismissalRequest(id=dismissal.id), timeout=10)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert dismissal.id not in [entry.id for entry in team_a.ListDismissals(pb.ListDismissalsRequest()).dismissals]
    assert dismissal.id in [entry.id for entry in owner.ListDismissals(pb.ListDismissalsRequest()).dismissals]
    assert [c.name for c in team_a.Stats(pb.StatsRequest(), timeout=10).collections] == ["team-a"]
    assert list(team_a.FindDuplicates(pb.FindDuplicatesRequest(collection="team-a"), timeout=30))

    # team-b's record is as it was: its picture, its metadata, its settings.
    still = owner.Check(pb.CheckRequest(image=copy_of_theirs, collections=["team-b"]), timeout=30).matches[0]
    assert (still.key, still.is_duplicate, dict(still.metadata)) == ("plan", True, {"owner": "team-b"})
    assert not [c for c in owner.Stats(pb.StatsRequest(), timeout=10).collections if c.name == "team-b"][0].own_settings


@pytest.mark.parametrize(
    "collections, problem",
    [([], "'collections' is empty: the token would reach nothing"), (["team a"], "must be 1-64 letters"),
     ("team-a", "must be a list of collection names")],
)  # fmt: skip
def test_a_token_entrys_collections_are_checked(tmp_path, collections, problem):
    from service.api.auth import TokenFileError, Tokens

    _, entry = new_token("scoped", ["check"])
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{**entry, "collections": collections}]}))
    with pytest.raises(TokenFileError, match=problem):
        Tokens(path)
    made = subprocess.run([sys.executable, "-m", "service.cli", "token", "new", "ops", "--roles", "check",
                           "--collection", "team-a", "--collection", ""], capture_output=True, text=True)  # fmt: skip
    assert json.loads(made.stdout.splitlines()[-1])["collections"] == ["", "team-a"]
