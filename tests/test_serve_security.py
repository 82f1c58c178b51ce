"""Who may talk to the service: the Host allow-list (DNS rebinding), the token, the same-origin rule, CORS."""

from __future__ import annotations

import pytest

import vaekit
from vaekit.errors import ConfigError

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'vaekit[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from vaekit.cli import main  # noqa: E402
from vaekit.serve import Explorer, create_app, server  # noqa: E402
from vaekit.serve.security import AccessPolicy, same_origin, split_host  # noqa: E402

LOCAL = "http://127.0.0.1"
TOKEN = "s3cret-Token_123"
Z = {"z": [[0.0] * 4]}


@pytest.fixture(scope="module")
def explorer(trained_run):
    return Explorer(vaekit.load(trained_run))


@pytest.fixture(scope="module")
def open_client(explorer):
    """The service as it starts by default: loopback, no token."""
    with TestClient(create_app(explorer), base_url=LOCAL) as c:
        yield c


@pytest.fixture
def token_client(explorer):
    """A service with a token, and a fresh cookie jar for each test."""
    with TestClient(create_app(explorer, token=TOKEN), base_url=LOCAL, follow_redirects=False) as c:
        yield c


BEARER = {"Authorization": f"Bearer {TOKEN}"}


# --- the Host header ---------------------------------------------------------------------------

def test_an_unknown_host_name_is_refused_with_a_hint(explorer):
    with TestClient(create_app(explorer)) as c:  # the test client's default Host: "testserver"
        answer = c.get("/api/info")
    assert answer.status_code == 421
    assert answer.headers["content-type"] == "application/json"
    detail = answer.json()["detail"]
    assert "'testserver'" in detail and "--allowed-host testserver" in detail


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "192.168.1.5:8000"])
def test_a_rebinding_page_host_is_refused(open_client, host):
    assert open_client.get("/api/info", headers={"Host": host}).status_code == 421
    assert open_client.post("/api/decode", json=Z, headers={"Host": host}).status_code == 421


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LocalHost:8000", "127.0.0.1", "127.0.0.1:8000",
                                  "127.0.0.7:9", "[::1]", "[::1]:8000"])
def test_loopback_names_and_addresses_are_allowed_with_or_without_a_port(open_client, host):
    assert open_client.get("/api/info", headers={"Host": host}).status_code == 200


def test_a_malformed_host_header_is_a_400(open_client):
    for host in ("[::1", "localhost:port", "localhost:99999", "localhost:"):
        answer = open_client.get("/api/health", headers={"Host": host})
        assert answer.status_code == 400 and "Host header" in answer.json()["detail"], host


def test_allowed_hosts_add_names(explorer):
    app = create_app(explorer, allowed_hosts=["myhost.lan", "10.1.2.3"])
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/info", headers={"Host": "myhost.lan:8000"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "MyHost.LAN"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "10.1.2.3:8000"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "other.lan"}).status_code == 421
        assert c.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200  # loopback stays


def test_the_address_a_connection_reached_is_allowed(explorer):
    """With --host 0.0.0.0 clients reach the machine by any of its addresses; IP addresses cannot be rebound."""
    with TestClient(create_app(explorer), base_url="http://192.168.1.5:8000") as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"Host": "192.168.1.6:8000"}).status_code == 421


def test_bad_allowed_hosts_and_tokens_are_refused_when_the_app_is_built(explorer):
    for name in ("*.lan", "*", "my host", "http://myhost.lan/", ""):
        with pytest.raises(ConfigError, match="is not a host name"):
            create_app(explorer, allowed_hosts=[name])
    for token in ("", "two words", "tab\there", "n\u00e4me"):
        with pytest.raises(ConfigError, match="printable ASCII"):
            create_app(explorer, token=token)


def test_host_and_origin_parsing():
    assert split_host("Example.ORG:8000") == ("example.org", 8000)
    assert split_host("[::1]:80") == ("::1", 80) and split_host("[::1]") == ("::1", None)
    assert split_host("::1") == ("::1", None)
    assert split_host("[::1") is None and split_host("a:b") is None and split_host(":80") is None
    assert split_host("localhost:\u00b2") is None  # a digit to str.isdigit, not to int()
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("http://localhost", "localhost:80") and same_origin("https://example.org", "example.org")
    assert same_origin("http://[::1]:8000", "[::1]:8000")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("http://localhost:8000", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1:8000") and not same_origin("file://", "127.0.0.1:8000")


# --- the token ---------------------------------------------------------------------------------

def test_without_a_token_every_request_is_refused_with_401(token_client):
    for path in ("/", "/api/info", "/api/health", "/openapi.json", "/static/app.js"):
        answer = token_client.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer TOKEN" in answer.json()["detail"] and "?token=" in answer.json()["detail"]
    assert token_client.post("/api/decode", json=Z).status_code == 401


def test_a_wrong_bearer_token_is_refused_and_the_right_one_works(token_client):
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer"):
        answer = token_client.get("/api/info", headers={"Authorization": wrong})
        assert answer.status_code == 401 and "does not carry this service's token" in answer.json()["detail"], wrong
    assert token_client.get("/api/info", headers=BEARER).status_code == 200
    assert token_client.get("/api/info", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert token_client.post("/api/decode", json=Z, headers=BEARER).status_code == 200
    assert token_client.get("/openapi.json", headers=BEARER).status_code == 200


def test_a_token_in_the_url_opens_the_page_only(token_client):
    assert token_client.get(f"/api/info?token={TOKEN}").status_code == 401


def test_the_one_time_link_sets_a_strict_cookie_and_then_the_page_and_api_work_with_it(token_client):
    answer = token_client.get(f"/?token={TOKEN}")
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("vaekit_session_80=")
    assert all(part in cookie for part in ("HttpOnly", "SameSite=Strict", "Path=/"))
    assert TOKEN not in cookie  # the cookie holds a value derived from the token, not the token
    assert answer.headers["cache-control"] == "no-store" and answer.headers["referrer-policy"] == "no-referrer"
    assert "vaekit_session_80" in token_client.cookies
    page = token_client.get("/")
    assert page.status_code == 200 and "vaekit explorer" in page.text
    assert token_client.get("/static/app.js").status_code == 200
    assert token_client.get("/api/info").json()["latent_dim"] == 4
    same_origin_post = token_client.post("/api/decode", json=Z, headers={"Origin": LOCAL})
    assert same_origin_post.status_code == 200


def test_a_wrong_link_or_a_cookie_of_another_token_is_refused(explorer, token_client):
    wrong = token_client.get("/?token=nope")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert "token in the link is wrong" in wrong.json()["detail"]
    other = AccessPolicy.build(token="another-token").session_value()
    token_client.cookies.set("vaekit_session_80", other)
    stale = token_client.get("/api/info")
    assert stale.status_code == 401 and "another token" in stale.json()["detail"]


def test_each_port_has_its_own_session_cookie(token_client):
    """Browsers share cookies between the ports of a host: two services on one machine must not clash."""
    answer = token_client.get(f"/?token={TOKEN}", headers={"Host": "localhost:8001"})
    assert answer.headers["set-cookie"].startswith("vaekit_session_8001=")
    token_client.cookies.clear()
    session = AccessPolicy.build(token=TOKEN).session_value()
    assert token_client.get("/api/info", headers={"Host": "localhost:8001",
                                                  "Cookie": f"vaekit_session_8001={session}"}).status_code == 200
    assert token_client.get("/api/info", headers={"Host": "localhost:8002",
                                                  "Cookie": f"vaekit_session_8001={session}"}).status_code == 401


# --- other origins and CORS ----------------------------------------------------------------------

@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999", "http://localhost",
                                    "http://127.0.0.1.evil.example", "http://127.0.0.1/page"])
def test_cross_origin_requests_are_refused(open_client, origin):
    answer = open_client.post("/api/decode", json=Z, headers={"Origin": origin})
    assert answer.status_code == 403 and "cross-origin requests are refused" in answer.json()["detail"]
    assert open_client.get("/api/info", headers={"Origin": origin}).status_code == 403
    assert "access-control-allow-origin" not in answer.headers


def test_another_sites_requests_without_origin_are_refused_but_links_to_the_page_work(open_client):
    embedded = open_client.get("/api/sample.png", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
    assert embedded.status_code == 403
    neighbour = open_client.get("/api/info", headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"})
    assert neighbour.status_code == 403  # localhost:3000 is "same-site" with localhost:8000, yet another origin
    link = open_client.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert link.status_code == 200
    own = open_client.get("/api/info", headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
    assert own.status_code == 200


def test_same_origin_requests_work_and_no_answer_carries_cors_headers(open_client):
    answers = [open_client.post("/api/decode", json=Z, headers={"Origin": LOCAL}),
               open_client.get("/api/info", headers={"Origin": "http://localhost:8000", "Host": "localhost:8000"}),
               open_client.get("/"),
               open_client.options("/api/decode", headers={"Origin": "http://evil.example",
                                                           "Access-Control-Request-Method": "POST"})]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert answers[3].status_code == 403  # a CORS preflight from another origin
    for answer in answers:
        assert not any(name.lower().startswith("access-control-") for name in answer.headers)


def test_docs_pages_are_off_and_the_schema_stays(open_client):
    assert open_client.get("/docs").status_code == 404 and open_client.get("/redoc").status_code == 404
    assert "/api/decode" in open_client.get("/openapi.json").json()["paths"]
    assert 'href="docs"' not in open_client.get("/").text


# --- the command line and the background server ---------------------------------------------------

@pytest.fixture
def fake_server(monkeypatch):
    """``vaekit serve`` up to the point where uvicorn would start: the app it built, and no server."""
    started = {}

    def run(app, sock, **kwargs):
        started["app"], started["address"] = app, sock.getsockname()
        sock.close()

    monkeypatch.setattr(server, "run", run)
    monkeypatch.delenv("VAEKIT_TOKEN", raising=False)
    return started


def test_serving_beyond_loopback_without_a_token_exits_2_with_one_line(trained_run, fake_server, capsys):
    assert main(["serve", str(trained_run), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vaekit: error: listening on 0.0.0.0")
    assert all(word in err for word in ("--token TOKEN", "VAEKIT_TOKEN", "--no-auth", "secrets.token_urlsafe"))
    assert fake_server == {}


def test_no_auth_and_a_token_contradict(trained_run, fake_server, capsys):
    assert main(["serve", str(trained_run), "--host", "0.0.0.0", "--no-auth", "--token", TOKEN]) == 2
    assert "--no-auth and --token contradict" in capsys.readouterr().err


def test_no_auth_starts_beyond_loopback_with_a_warning(trained_run, fake_server, capsys):
    assert main(["serve", str(trained_run), "--host", "0.0.0.0", "--port", "0", "--no-auth", "--no-data"]) == 0
    captured = capsys.readouterr()
    assert "without authentication (--no-auth)" in captured.err and "?token=" not in captured.out
    assert fake_server["app"].state.access.token is None
    with TestClient(fake_server["app"], base_url=LOCAL) as c:
        assert c.get("/api/info").status_code == 200


def test_a_token_from_the_environment_and_allowed_hosts_reach_the_app(trained_run, fake_server, capsys, monkeypatch):
    monkeypatch.setenv("VAEKIT_TOKEN", TOKEN)
    assert main(["serve", str(trained_run), "--host", "0.0.0.0", "--port", "0", "--no-data",
                 "--allowed-host", "myhost.lan", "--allowed-host", "gpu-box"]) == 0
    out = capsys.readouterr().out
    assert f"/?token={TOKEN} in a browser" in out and out.count(TOKEN) == 1  # the link, printed once
    with TestClient(fake_server["app"], base_url=LOCAL) as c:
        assert c.get("/api/info").status_code == 401
        assert c.get("/api/info", headers={**BEARER, "Host": "myhost.lan:8000"}).status_code == 200
        assert c.get("/api/info", headers={**BEARER, "Host": "gpu-box"}).status_code == 200
        assert c.get("/api/info", headers={**BEARER, "Host": "evil.example"}).status_code == 421


def test_a_token_on_loopback_is_used_and_a_bad_allowed_host_is_one_line(trained_run, fake_server, capsys):
    assert main(["serve", str(trained_run), "--port", "0", "--no-data", "--token", TOKEN]) == 0
    assert fake_server.pop("app").state.access.token == TOKEN
    capsys.readouterr()
    assert main(["serve", str(trained_run), "--port", "0", "--no-data", "--allowed-host", "*.lan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allowed-host '*.lan' is not a host name" in err


def test_the_background_server_refuses_to_listen_beyond_loopback_without_a_token(explorer):
    with pytest.raises(ConfigError, match="needs a token"):
        server.BackgroundServer(create_app(explorer), host="0.0.0.0")
    server.BackgroundServer(create_app(explorer), host="0.0.0.0", no_auth=True)  # said explicitly: allowed
    server.BackgroundServer(create_app(explorer, token=TOKEN), host="0.0.0.0")


def test_over_tcp_the_link_cookie_and_the_host_check_work(explorer):
    httpx = pytest.importorskip("httpx2", reason="httpx2 (a dev dependency) is needed to talk to the server")
    with server.BackgroundServer(create_app(explorer, token=TOKEN)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/api/info").status_code == 401
        page = client.get(f"/?token={TOKEN}", follow_redirects=True)
        assert page.status_code == 200 and str(page.url) == url and "vaekit explorer" in page.text
        assert client.post("/api/decode", json=Z).status_code == 200  # the cookie alone
        rebound = client.get("/api/info", headers={"Host": f"evil.example:{url.rsplit(':', 1)[1].strip('/')}"})
        assert rebound.status_code == 421
