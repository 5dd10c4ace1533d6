"""The service lets no one in without a login, lets a viewer change nothing, escapes what users
typed, refuses forged forms, keeps no password in clear and slows down password guessing.

Run in-process (Starlette's test client) on SQLite and PostgreSQL; no recommendation is
computed here."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from popkin.service.app import create_app
from popkin.service.database import connect, sessions, transaction
from popkin.service.security import MAX_FAILURES
from popkin.service.tables import User

from .conftest import ADMIN, PATIENT_CSV, PHARMACIST, VIEWER, add_users, csrf_of

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def app_url(db_url):
    add_users(db_url)
    return db_url


@pytest.fixture
def client(app_url):
    with TestClient(create_app(app_url, workers=1), follow_redirects=True) as c:
        yield c


def login(client, name, password) -> str:
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"name": name, "password": password, "login_token": token,
                                    "next": "/"})
    assert r.status_code == 200 and "Log out" in r.text, r.text[:300]
    return csrf_of(r.text)


def _routes(app):
    for route in app.routes:
        for method in sorted(getattr(route, "methods", ()) or ()):
            if method != "HEAD":
                yield method, route.path


def _concrete(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "1", path)


def test_every_route_refuses_an_anonymous_request(client):
    app = client.app
    checked = 0
    for method, path in _routes(app):
        if path == "/login":
            continue
        url = _concrete(path)
        r = client.request(method, url, follow_redirects=False)
        if path.startswith("/api/"):
            assert r.status_code == 401, (method, path, r.status_code)
            assert "log in" in r.json()["error"]
        else:
            assert r.status_code == 303, (method, path, r.status_code)
            assert r.headers["location"].startswith("/login?next="), (method, path)
        checked += 1
    assert checked >= 25
    # unknown addresses and malformed ones ask for the login before saying anything
    for url in ("/no/such/page", "/patients/abc", "/api/v1/nothing", "/static/x.css"):
        r = client.get(url, follow_redirects=False)
        assert r.status_code in (303, 401), (url, r.status_code)
    # an invented or revoked bearer token is no login
    r = client.get("/api/v1/patients", headers={"Authorization": "Bearer pk_invented"})
    assert r.status_code == 401


def test_the_login_page_alone_answers_and_sets_security_headers(client):
    r = client.get("/login")
    assert r.status_code == 200
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_a_viewer_can_read_but_not_write(client, app_url):
    csrf = login(client, *PHARMACIST)
    r = client.post("/patients", data={"identifier": "P1", "csrf_token": csrf})
    pid = int(str(r.url).rsplit("/", 1)[1])
    client.post(f"/patients/{pid}/upload", data={"format": "csv", "csrf_token": csrf},
                files={"file": ("p.csv", PATIENT_CSV, "text/csv")})
    client.post("/logout", data={"csrf_token": csrf})

    csrf = login(client, *VIEWER)
    page = client.get(f"/patients/{pid}")
    assert page.status_code == 200 and "P1" in page.text
    assert "add-dose" not in page.text and "New recommendation" not in page.text
    entry = re.search(r"/entries/(\d+)/correct", page.text)
    assert entry is None                         # no correction forms for a viewer
    writes = [
        ("/patients", {"identifier": "P2"}),
        (f"/patients/{pid}/entries", {"kind": "dose", "time": "24", "amount": "1000"}),
        (f"/patients/{pid}/entries/1/correct", {"value": "1", "reason": "x"}),
        (f"/patients/{pid}/recommend", {"model": "vancomycin_goti", "target": "auc24:400-600"}),
        ("/recommendations/1/rerun", {}),
        ("/users", {"name": "eve", "role": "admin", "password": "0123456789ab"}),
        ("/users/1/active", {"active": "0"}),
    ]
    for url, data in writes:
        r = client.post(url, data={**data, "csrf_token": csrf}, follow_redirects=False)
        assert r.status_code == 403, (url, r.status_code)
    r = client.post(f"/patients/{pid}/upload", data={"format": "csv", "csrf_token": csrf},
                    files={"file": ("p.csv", PATIENT_CSV, "text/csv")}, follow_redirects=False)
    assert r.status_code == 403
    assert client.get(f"/patients/{pid}/recommend", follow_redirects=False).status_code == 403
    assert client.get("/users", follow_redirects=False).status_code == 403
    # nothing changed
    with transaction(sessions(connect(app_url))) as db:
        assert db.scalar(text("select count(*) from patients")) == 1
        assert db.scalar(text("select count(*) from jobs")) == 0
        assert db.scalar(text("select count(*) from users")) == 3


def test_free_text_comes_back_escaped(client):
    csrf = login(client, *PHARMACIST)
    r = client.post("/patients", data={"identifier": XSS[:60], "note": XSS, "csrf_token": csrf})
    assert r.status_code == 200
    pid = int(str(r.url).rsplit("/", 1)[1])
    for kind, fields in (("covariate", {"name": "WT", "value": XSS[:60], "unit": XSS[:30]}),
                         ("dose", {"time": "0", "amount": "1000", "unit": XSS[:30],
                                   "note": XSS}),
                         ("level", {"time": "5", "value": "10", "note": XSS})):
        r = client.post(f"/patients/{pid}/entries",
                        data={"kind": kind, **fields, "csrf_token": csrf})
        assert r.status_code == 200, r.text[:300]
    page = client.get(f"/patients/{pid}").text
    entry = re.search(r"/entries/(\d+)/correct", page).group(1)
    client.post(f"/patients/{pid}/entries/{entry}/correct",
                data={"remove": "1", "reason": XSS, "csrf_token": csrf})
    # an error message that repeats the user's input
    bad = client.post(f"/patients/{pid}/entries",
                      data={"kind": "dose", "time": XSS, "amount": "1", "csrf_token": csrf})
    for html in (client.get(f"/patients/{pid}").text, client.get("/").text,
                 client.get("/audit").text, bad.text):
        assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in client.get(f"/patients/{pid}").text
    # the recommendation form echoes what was typed when it refuses it
    r = client.post(f"/patients/{pid}/recommend",
                    data={"model": "vancomycin_goti", "target": XSS, "csrf_token": csrf})
    assert r.status_code == 400 and "<script>" not in r.text and "&lt;script&gt;" in r.text


def test_a_request_without_the_csrf_token_is_refused(client):
    csrf = login(client, *PHARMACIST)
    for data in ({"identifier": "P9"}, {"identifier": "P9", "csrf_token": "forged"},
                 {"identifier": "P9", "csrf_token": ""}):
        r = client.post("/patients", data=data, follow_redirects=False)
        assert r.status_code == 403 and "security token" in r.text
    r = client.post("/logout", follow_redirects=False)
    assert r.status_code == 403
    # a JSON request with the session cookie needs the header too
    r = client.post("/api/v1/patients", json={"identifier": "P9"})
    assert r.status_code == 403
    r = client.post("/api/v1/patients", json={"identifier": "P9"},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    # the login form has its own token (a forged login would log the victim in as the
    # attacker)
    fresh = TestClient(client.app)
    r = fresh.post("/login", data={"name": PHARMACIST[0], "password": PHARMACIST[1],
                                   "login_token": "forged", "next": "/"})
    assert r.status_code == 403


def test_passwords_are_stored_hashed(client, app_url):
    with transaction(sessions(connect(app_url))) as db:
        users = db.scalars(select(User)).all()
        dump = " ".join(str(v) for u in users for v in vars(u).values())
    for _, password in (ADMIN, PHARMACIST, VIEWER):
        assert password not in dump
    assert all(u.password_hash.startswith("$argon2id$") for u in users)
    assert len({u.password_hash for u in users}) == 3


def test_login_attempts_are_rate_limited(client):
    page = client.get("/login")
    for attempt in range(MAX_FAILURES):
        token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
        page = client.post("/login", data={"name": PHARMACIST[0], "password": "wrong guess",
                                           "login_token": token, "next": "/"})
        assert page.status_code == 401 and "wrong user name or password" in page.text
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    page = client.post("/login", data={"name": PHARMACIST[0], "password": PHARMACIST[1],
                                       "login_token": token, "next": "/"})
    # even the right password waits out the window now
    assert page.status_code == 429 and "too many failed logins" in page.text
    # and another name from the same address is limited too
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    page = client.post("/login", data={"name": ADMIN[0], "password": ADMIN[1],
                                       "login_token": token, "next": "/"})
    assert page.status_code == 429


def test_logout_ends_the_session_and_next_stays_on_the_site(client):
    csrf = login(client, *PHARMACIST)
    cookie = client.cookies.get("popkin_session")
    client.post("/logout", data={"csrf_token": csrf})
    replay = TestClient(client.app, cookies={"popkin_session": cookie})
    assert replay.get("/", follow_redirects=False).status_code == 303
    page = client.get("/login?next=//evil.example/x")
    assert 'value="/"' in page.text and "evil" not in page.text


def test_api_tokens_for_scripts(client, app_url):
    from popkin.service.server import make_token

    token = make_token(app_url, PHARMACIST[0], "tests")
    api = TestClient(client.app, headers={"Authorization": f"Bearer {token}"})
    r = api.post("/api/v1/patients", json={"identifier": "API-1", "note": "by script"})
    assert r.status_code == 201
    pid = r.json()["id"]
    r = api.post(f"/api/v1/patients/{pid}/entries", json={
        "doses": [{"time": 0, "amount": 1000, "duration": 1}],
        "levels": [{"time": 11.5, "value": 9.0}],
        "covariates": [{"name": "WT", "value": "70", "unit": "kg"}]})
    assert r.status_code == 201 and r.json() == {"added": 3}
    r = api.post(f"/api/v1/patients/{pid}/entries", json={"doses": [{"time": -1,
                                                                      "amount": 10}]})
    assert r.status_code == 400 and r.json()["error"].startswith("doses[0]: dose time")
    record = api.get(f"/api/v1/patients/{pid}").json()
    assert [e["kind"] for e in record["entries"]] == ["dose", "level", "covariate"]
    assert record["records"][0]["RATE"] == -2 and record["records"][0]["DUR"] == 1
    # a viewer's token reads but does not write
    viewer = TestClient(client.app, headers={
        "Authorization": f"Bearer {make_token(app_url, VIEWER[0])}"})
    assert viewer.get(f"/api/v1/patients/{pid}").status_code == 200
    assert viewer.post("/api/v1/patients", json={"identifier": "X"}).status_code == 403


def test_a_password_change_ends_other_sessions_and_revoked_tokens_stop_working(client, app_url):
    from popkin.service.server import make_token, reset_password, revoke_tokens

    other = TestClient(client.app, follow_redirects=True)
    login(other, *PHARMACIST)
    csrf = login(client, *PHARMACIST)
    r = client.post("/account/password", data={"current": "not it", "new": "a new password 1",
                                               "again": "a new password 1", "csrf_token": csrf})
    assert r.status_code == 400 and "current password is wrong" in r.text
    r = client.post("/account/password", data={"current": PHARMACIST[1],
                                               "new": "a new password 1",
                                               "again": "a new password 1", "csrf_token": csrf})
    assert r.status_code == 200 and "Password changed" in r.text
    assert client.get("/", follow_redirects=False).status_code == 200       # this session
    assert other.get("/", follow_redirects=False).status_code == 303        # the other one
    login(other, PHARMACIST[0], "a new password 1")
    # an admin's reset from the command line ends every session
    reset_password(app_url, PHARMACIST[0], "reset by the admin")
    assert client.get("/", follow_redirects=False).status_code == 303
    token = make_token(app_url, PHARMACIST[0])
    api = TestClient(client.app, headers={"Authorization": f"Bearer {token}"})
    assert api.get("/api/v1/patients").status_code == 200
    assert revoke_tokens(app_url, PHARMACIST[0]) == 1
    assert api.get("/api/v1/patients").status_code == 401


def test_a_missing_record_is_a_404_after_login(client):
    login(client, *VIEWER)
    for url in ("/patients/999", "/jobs/999", "/recommendations/999",
                "/recommendations/999/report.pdf", "/recommendations/1/nothing"):
        r = client.get(url, follow_redirects=False)
        assert r.status_code == 404 and "no such page or record" in r.text, url
    for url in ("/api/v1/patients/999", "/api/v1/jobs/999", "/api/v1/recommendations/999"):
        r = client.get(url)
        assert r.status_code == 404 and r.json() == {"error": "no such page or record"}, url

