"""Access control against real tokens: a local OpenID Connect issuer (discovery document and JWKS over HTTP)
with RSA and EC keys, tokens signed by PyJWT, and the real server; API keys made with the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from auth_support import AUDIENCE, Issuer

from tests.conftest import PYDICOM_TEST_FILES, Server, multipart_body, new_uids
from tests.test_cli import run

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=test-boundary-1234'


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    idp = Issuer()
    yield idp
    idp.close()


@pytest.fixture(scope="module")
def oidc_server(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("oidc") / "data"
    srv = Server(
        data,
        {
            "DICOMWEB_OIDC_ISSUER": issuer.url,
            "DICOMWEB_OIDC_AUDIENCE": AUDIENCE,
            "DICOMWEB_OIDC_JWKS_REFETCH_SECONDS": "2",
            "DICOMWEB_AUDIT_LOG": str(data.parent / "audit.jsonl"),
        },
        args=["--log-level", "info"],
    )
    yield srv
    srv.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(r: httpx.Response, description: str) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="dicomweb", error="invalid_token"'), challenge
    assert description in challenge, challenge
    assert r.json() == {"status": 401, "error": f"authentication required: {description}"}


def test_valid_rsa_and_ec_tokens_read(oidc_server: Server, issuer: Issuer) -> None:
    for kid in ("rsa-1", "ec-1"):
        r = httpx.get(f"{oidc_server.root}/studies", headers=bearer(issuer.token(kid)))
        assert r.status_code == 200, (kid, r.text)


def test_missing_token(oidc_server: Server) -> None:
    assert_401(httpx.get(f"{oidc_server.root}/studies"), "no access token")
    # The health check and the viewer pages need none (their data requests do).
    assert httpx.get(f"{oidc_server.base}/healthz").status_code == 200
    assert httpx.get(f"{oidc_server.base}/viewer-demo/").status_code == 200


@pytest.mark.parametrize(
    ("make", "description"),
    [
        (lambda i: i.token(exp=int(time.time()) - 120), "token expired"),
        (lambda i: i.token(nbf=int(time.time()) + 600), "token not yet valid"),
        (lambda i: i.token(aud="another-service"), "token issued for another audience"),
        (lambda i: i.token(iss="https://evil.example"), "token from another issuer"),
        (lambda i: i.token(exp=None), "token lacks a required claim (exp, iss or aud)"),
        (lambda i: i.unsigned_token(), "token algorithm not allowed"),
        (lambda i: i.hs256_with_public_key(), "token algorithm not allowed"),
        (lambda i: i.token("rsa-1")[:-10] + "AAAAAAAAAA", "token signature does not verify"),
        (lambda i: "not.a.jwt", "malformed token"),
    ],
    ids=[
        "expired",
        "nbf-future",
        "wrong-aud",
        "wrong-iss",
        "no-exp",
        "alg-none",
        "hs256-public-key",
        "bad-signature",
        "garbage",
    ],
)
def test_bad_tokens_are_401(oidc_server: Server, issuer: Issuer, make, description: str) -> None:
    token = make(issuer)
    r = httpx.get(f"{oidc_server.root}/studies", headers=bearer(token))
    assert_401(r, description)
    assert token not in r.text and token not in str(r.headers)


def test_clock_skew_is_tolerated(oidc_server: Server, issuer: Issuer) -> None:
    # Expired 10 s ago, valid from 10 s from now: within the 30 s leeway.
    now = int(time.time())
    for token in (issuer.token(exp=now - 10), issuer.token(nbf=now + 10)):
        assert httpx.get(f"{oidc_server.root}/studies", headers=bearer(token)).status_code == 200


def test_missing_scope_is_403(oidc_server: Server, issuer: Issuer) -> None:
    r = httpx.get(f"{oidc_server.root}/studies", headers=bearer(issuer.token(scope="openid profile")))
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == (
        'Bearer realm="dicomweb", error="insufficient_scope", '
        'error_description="this request needs the scope dicomweb.read", scope="dicomweb.read"'
    )
    read_only = bearer(issuer.token())
    for method, path, scope in [
        ("POST", "/studies", "dicomweb.write"),
        ("DELETE", "/studies/1.2.3", "dicomweb.delete"),
        ("GET", "/status", "dicomweb.admin"),
    ]:
        r = httpx.request(method, f"{oidc_server.root}{path}", headers=read_only)
        assert r.status_code == 403, (method, path, r.text)
        assert f'scope="{scope}"' in r.headers["www-authenticate"]


def test_scopes_from_scp_list_and_keycloak_roles(oidc_server: Server, issuer: Issuer) -> None:
    ct = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
    writer_scp = issuer.token(scope=None, scp=["dicomweb.write"])
    r = httpx.post(
        f"{oidc_server.root}/studies",
        content=multipart_body([ct]),
        headers={**bearer(writer_scp), "Content-Type": STOW_TYPE},
    )
    assert r.status_code == 200, r.text
    admin_role = issuer.token(scope=None, realm_access={"roles": ["dicomweb.admin", "offline_access"]})
    assert httpx.get(f"{oidc_server.root}/status", headers=bearer(admin_role)).status_code == 200
    assert httpx.get(f"{oidc_server.root}/studies", headers=bearer(admin_role)).status_code == 403


def test_unknown_kid_refetch_is_rate_limited_then_rotation(oidc_server: Server, issuer: Issuer) -> None:
    issuer.add_key("rsa-2")
    token = issuer.token("rsa-2")
    time.sleep(2.1)  # let a refetch be allowed
    before = issuer.jwks_fetches
    started = time.monotonic()
    assert_401(
        httpx.get(f"{oidc_server.root}/studies", headers=bearer(token)), "token signed by an unknown key"
    )
    # A flood of tokens with unknown kids: at most one fetch per refetch interval (2 s here), however slow
    # a loaded machine makes the flood.
    for n in range(30):
        r = httpx.get(f"{oidc_server.root}/studies", headers=bearer(issuer.token("rsa-2", jti=str(n))))
        assert r.status_code == 401
    allowed = 1 + int((time.monotonic() - started) // 2.0)
    assert 1 <= issuer.jwks_fetches - before <= allowed, (issuer.jwks_fetches - before, allowed)
    # The issuer rotates: rsa-2 published. Once the interval has passed, the next token makes it fetched.
    issuer.published.add("rsa-2")
    time.sleep(2.1)
    fetched = issuer.jwks_fetches
    r = httpx.get(f"{oidc_server.root}/studies", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert issuer.jwks_fetches == fetched + 1


def test_access_token_query_parameter_on_get_only(oidc_server: Server, issuer: Issuer) -> None:
    token = issuer.token()
    r = httpx.get(f"{oidc_server.root}/studies", params={"access_token": token, "limit": "5"})
    assert r.status_code == 200, r.text  # and the parameter is not taken for a search key
    writer = issuer.token(scope="dicomweb.write")
    r = httpx.post(
        f"{oidc_server.root}/studies",
        params={"access_token": writer},
        content=b"",
        headers={"Content-Type": STOW_TYPE},
    )
    assert_401(r, "no access token")


def test_tokens_never_reach_the_logs(oidc_server: Server, issuer: Issuer) -> None:
    token = issuer.token(jti="find-me-in-the-logs")
    httpx.get(f"{oidc_server.root}/studies", params={"access_token": token, "PatientName": "SECRET^NAME"})
    httpx.get(f"{oidc_server.root}/studies", params={"access_token": token + "x"})
    time.sleep(1.5)  # the audit log is flushed every second
    log = Path(oidc_server.log.name).read_text()
    audit = (oidc_server.data_dir.parent / "audit.jsonl").read_text()
    assert "GET /dicom-web/studies 200" in log  # the access log is on
    for text in (log, audit):
        assert token[:40] not in text and token.split(".")[2][:20] not in text
        assert "SECRET" not in text
    assert '"PatientName":"***"' in audit


# ---- API keys --------------------------------------------------------------------------------------


def dicomweb(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return run(*args, "--data", str(data), timeout=120)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    data = tmp_path_factory.mktemp("keys") / "data"
    keys = {}
    for name, scopes in (("gateway", "write"), ("viewer", "read"), ("janitor", "read,delete")):
        done = dicomweb("apikey", "create", name, "--scopes", scopes, data=data)
        assert done.returncode == 0, done.stderr
        keys[name] = done.stdout.splitlines()[0]
        assert keys[name].startswith("dwk_")
    srv = Server(data)
    yield srv, keys
    srv.stop()


def test_api_keys_create_use_revoke(keyed: tuple[Server, dict[str, str]]) -> None:
    srv, keys = keyed
    data = srv.data_dir
    # Only the hash is stored.
    assert keys["gateway"].encode() not in (data / "index.sqlite").read_bytes()
    listing = dicomweb("apikey", "list", data=data)
    assert listing.returncode == 0 and "gateway" in listing.stdout and keys["gateway"] not in listing.stdout
    again = dicomweb("apikey", "create", "gateway", "--scopes", "write", data=data)
    assert again.returncode == 1 and "exists" in again.stderr
    bad = dicomweb("apikey", "create", "x", "--scopes", "everything", data=data)
    assert bad.returncode == 1 and "unknown scope" in bad.stderr

    assert_401(
        httpx.get(f"{srv.root}/studies"), "no access token"
    )  # keys exist: the loopback server is closed
    ct = new_uids((PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes())
    r = httpx.post(
        f"{srv.root}/studies",
        content=multipart_body([ct]),
        headers={"X-API-Key": keys["gateway"], "Content-Type": STOW_TYPE},
    )
    assert r.status_code == 200, r.text
    assert httpx.get(f"{srv.root}/studies", headers={"X-API-Key": keys["gateway"]}).status_code == 403
    r = httpx.get(f"{srv.root}/studies", headers=bearer(keys["viewer"]))
    assert r.status_code == 200 and len(r.json()) == 1
    assert_401(
        httpx.get(f"{srv.root}/studies", headers=bearer(keys["viewer"][:-1] + "A")), "unknown or revoked key"
    )

    revoked = dicomweb("apikey", "revoke", "viewer", data=data)
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.time() + 10
    while httpx.get(f"{srv.root}/studies", headers=bearer(keys["viewer"])).status_code == 200:
        assert time.time() < deadline, "the revoked key still works"
        time.sleep(0.5)
    assert_401(httpx.get(f"{srv.root}/studies", headers=bearer(keys["viewer"])), "unknown or revoked key")
    assert "revoked" in dicomweb("apikey", "list", data=data).stdout
    assert dicomweb("apikey", "revoke", "viewer", data=data).returncode == 1


def test_open_bind_refused_without_auth(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomweb",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "1",
            "--data",
            str(tmp_path / "data"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "refusing to serve patient data on 0.0.0.0" in done.stderr and "--allow-anonymous" in done.stderr
    assert "Traceback" not in done.stderr


def test_ohif_app_config_signs_in_with_the_issuer() -> None:
    from dicomweb.static_sites import ohif_app_config
    from storage import Settings

    plain = ohif_app_config(Settings(), "/ohif", "stages").data.decode()
    assert '"oidc"' not in plain
    body = ohif_app_config(
        Settings(
            oidc_issuer="https://id.example/realms/h",
            oidc_audience="dicomweb",
            ohif_oidc_client_id="ohif-viewer",
        ),
        "/ohif",
        "stages",
    ).data.decode()
    config = json.loads(body.split("window.config = ", 1)[1].split(";\n", 1)[0])
    assert config["oidc"] == [
        {
            "authority": "https://id.example/realms/h",
            "client_id": "ohif-viewer",
            "redirect_uri": "/callback",
            "response_type": "code",
            "scope": "openid dicomweb.read",
            "post_logout_redirect_uri": "/",
        }
    ]


def test_access_labels_two_tokens_see_disjoint_studies(oidc_server: Server, issuer: Issuer) -> None:
    rw = "dicomweb.read dicomweb.write"
    cardio = bearer(issuer.token(sub="carol", scope=rw, dicomweb_labels=["cardio"]))
    neuro = bearer(issuer.token(sub="nick", scope=rw, dicomweb_labels="neuro"))
    everyone = bearer(issuer.token(scope="dicomweb.read"))  # no labels claim: every study
    admin = bearer(issuer.token(scope="dicomweb.admin"))
    raw = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    stored = {}
    for name, headers in (("cardio", cardio), ("neuro", neuro)):
        f = new_uids(raw)
        r = httpx.post(
            f"{oidc_server.root}/studies",
            content=multipart_body([f]),
            headers={**headers, "Content-Type": STOW_TYPE},
        )
        assert r.status_code == 200, r.text
        stored[name] = r.json()["00081190"]["Value"][0].rsplit("/", 1)[1]

    def seen(headers: dict[str, str], level: str = "studies") -> set[str]:
        r = httpx.get(f"{oidc_server.root}/{level}", headers=headers)
        assert r.status_code == 200, r.text
        return {item["0020000D"]["Value"][0] for item in r.json()}

    for level in ("studies", "series", "instances"):
        assert seen(cardio, level) == {stored["cardio"]}
        assert seen(neuro, level) == {stored["neuro"]}
    assert {stored["cardio"], stored["neuro"]} <= seen(everyone)
    # WADO of a study the token may not see: 404, as for a study that does not exist.
    for path in ("/metadata", "", "/series", "/rendered"):
        r = httpx.get(f"{oidc_server.root}/studies/{stored['neuro']}{path}", headers=cardio)
        assert r.status_code == 404 and r.json()["error"] == "no such study", (path, r.text)
    assert (
        httpx.get(f"{oidc_server.root}/studies/{stored['cardio']}/metadata", headers=cardio).status_code
        == 200
    )
    # An admin relabels: the neuro study becomes visible to cardio too.
    assert httpx.get(f"{oidc_server.root}/studies/{stored['neuro']}/labels", headers=admin).json()[
        "labels"
    ] == ["neuro"]
    assert (
        httpx.put(
            f"{oidc_server.root}/studies/{stored['neuro']}/labels", headers=cardio, json={"labels": ["x"]}
        ).status_code
        == 403
    )
    r = httpx.put(
        f"{oidc_server.root}/studies/{stored['neuro']}/labels",
        headers=admin,
        json={"labels": ["neuro", "cardio"]},
    )
    assert r.status_code == 200 and r.json()["labels"] == ["cardio", "neuro"]
    assert seen(cardio) == {stored["cardio"], stored["neuro"]}
    assert (
        httpx.put(
            f"{oidc_server.root}/studies/{stored['neuro']}/labels", headers=admin, json={"labels": "neuro"}
        ).status_code
        == 400
    )
