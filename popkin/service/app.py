"""The web application and its JSON API (FastAPI, Jinja2 pages rendered on the server).

Pages work without JavaScript: forms post, a running recommendation's page reloads itself
until the answer is there. The JSON API under ``/api/v1`` offers the same operations to scripts
with an API token. Nothing but the login page answers without a login.

Why these libraries: FastAPI (on Starlette) for typed routes and the OpenAPI description of the
API; Jinja2, which escapes every value put into a page by default; SQLAlchemy 2 with Alembic for
one code path on SQLite and PostgreSQL and migrations that upgrade in place; argon2-cffi for
password hashes; uvicorn to serve. All are widely used and maintained.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from datetime import timedelta
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select, update
from starlette.datastructures import UploadFile

from .. import __version__
from . import ServiceError
from . import records as rec
from .database import connect, migrate, sessions, transaction
from .forms import RequestError, model_choices, recommendation_request
from .security import (AccountError, TooManyAttempts, add_user, audit, login, logout, may,
                       new_api_token, same_token, session_for, set_password, user_for_token,
                       verify_password)
from .tables import (ROLES, AuditEvent, Entry, Job, Patient, Recommendation, User,
                     utcnow)
from .worker import answer, job_payload, pool, run

SESSION_COOKIE = "popkin_session"
LOGIN_COOKIE = "popkin_login"
MAX_BODY = 6_000_000
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; "
                               "style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, message: str):
        super().__init__(message)


class NotFound(Exception):
    pass


class Identity:
    """Who is asking: the user, and for a browser session its CSRF token (``None`` for an API
    token, which carries no cookie and so needs none)."""

    def __init__(self, user: User, csrf: str | None, cookie: str | None):
        self.user, self.csrf, self.cookie = user, csrf, cookie
        self.id, self.name, self.role = user.id, user.name, user.role

    def may(self, needed: str) -> bool:
        return may(self.role, needed)


def create_app(db_url: str, *, workers: int = 2, fits: str | os.PathLike | None = None
               ) -> FastAPI:
    """The application on the database ``db_url``, with ``workers`` recommendation
    processes; the complete fit folders inside ``fits`` are offered as models
    (``fit:NAME``)."""
    fits = None if fits is None else Path(fits)
    if fits is not None and not fits.is_dir():
        raise ServiceError(f"--fits {str(fits)[:200]}: no such folder")
    engine = connect(db_url)
    factory = sessions(engine)
    templates = Jinja2Templates(directory=str(resources.files("popkin.service") / "templates"))
    templates.env.globals["version"] = __version__
    state: dict = {}
    pool_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        migrate(engine)
        with transaction(factory) as db:
            stale = db.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all()
            for job in stale:
                job.status, job.finished_at = "interrupted", utcnow()
                job.error = ("the service stopped before this recommendation finished; "
                             "nothing was recorded for it; ask again")
            if stale:
                audit(db, None, "jobs interrupted", ", ".join(str(j.id) for j in stale))
        state["pool"] = pool(workers)
        state["choices"] = model_choices(fits)
        yield
        with pool_lock:
            state["pool"].shutdown(wait=False, cancel_futures=True)
        engine.dispose()

    app = FastAPI(title="popkin dosing service", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.factory = factory

    # -- plumbing ---------------------------------------------------------------------------

    @app.middleware("http")
    async def limits_and_headers(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return _plain_error(request, 413, f"requests may carry at most "
                                              f"{MAX_BODY // 1_000_000} MB")
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _exc):
        if _is_api(request):
            return JSONResponse({"error": "log in first: an API token (Authorization: Bearer "
                                          "...) or a session"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return _plain_error(request, 403, str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, _exc):
        return _plain_error(request, 404, "no such page or record")

    # an unknown address, a wrong method or a malformed path tells an anonymous caller nothing
    # either: the login comes first
    @app.exception_handler(404)
    async def _no_route(request: Request, _exc):
        return await _after_login(request, 404, "no such page or record")

    @app.exception_handler(405)
    async def _no_method(request: Request, _exc):
        return await _after_login(request, 405, "method not allowed")

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError):
        where = ", ".join(".".join(map(str, e.get("loc", ()))) for e in exc.errors()[:3])
        return await _after_login(request, 404 if "path" in where else 400,
                                  f"malformed request ({where})")

    async def _after_login(request: Request, status: int, message: str):
        try:
            _identity(request)
        except LoginRequired:
            return await _login_required(request, None)
        return _plain_error(request, status, message)

    def _plain_error(request: Request, status: int, message: str):
        if _is_api(request):
            return JSONResponse({"error": message}, status_code=status)
        return templates.TemplateResponse(request, "error.html",
                                          {"status": status, "message": message, "me": None},
                                          status_code=status)

    def _identity(request: Request) -> Identity:
        header = request.headers.get("authorization", "")
        with transaction(factory) as db:
            if header.lower().startswith("bearer "):
                user = user_for_token(db, header[7:].strip())
                if user is None:
                    raise LoginRequired()
                return Identity(user, None, None)
            cookie = request.cookies.get(SESSION_COOKIE)
            row = session_for(db, cookie)
            if row is None:
                raise LoginRequired()
            return Identity(row.user, row.csrf_token, cookie)

    async def _form(request: Request) -> dict:
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                raise RequestError("the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise RequestError("the body must be a JSON object")
            return body
        form = await request.form(max_files=1, max_fields=100)
        return {k: v for k, v in form.multi_items()}

    async def _writer(request: Request, needed: str = "pharmacist") -> tuple[Identity, dict]:
        me = _identity(request)
        form = await _form(request)
        if me.csrf is not None:
            given = request.headers.get("x-csrf-token") or form.get("csrf_token")
            if not same_token(given if isinstance(given, str) else None, me.csrf):
                raise Forbidden("the form's security token is missing or out of date; reload "
                                "the page and try again")
        if not me.may(needed):
            raise Forbidden(f"a {me.role} may not do this (it needs the {needed} role)")
        return me, form

    def _page(request: Request, template: str, me: Identity, status: int = 200, **context):
        return templates.TemplateResponse(request, template,
                                          {"me": me, "csrf": me.csrf, **context},
                                          status_code=status)

    def _row(db, table, key: int):
        """The row of ``table`` with primary key ``key``, or a 404."""
        row = db.get(table, key)
        if row is None:
            raise NotFound()
        return row

    def _patient(db, patient_id: int) -> Patient:
        return _row(db, Patient, patient_id)

    # -- login ------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/"):
        # one login token per browser, not per page: a request the browser makes by itself
        # (its /favicon.ico, which ends on this page) or a second tab must not invalidate the
        # form already shown
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{43}", token):
            token = secrets.token_urlsafe(32)
        response = templates.TemplateResponse(
            request, "login.html", {"me": None, "login_token": token, "next": _safe_next(next),
                                    "error": None})
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                            max_age=3600, secure=request.url.scheme == "https")
        return response

    @app.post("/login")
    async def login_submit(request: Request):
        form = await request.form(max_files=0, max_fields=10)
        target = _safe_next(str(form.get("next", "/")))
        if not same_token(str(form.get("login_token", "")), request.cookies.get(LOGIN_COOKIE)):
            return _plain_error(request, 403, "the login form is out of date; reload it")
        address = request.client.host if request.client else "unknown"
        error, status = None, 200
        with transaction(factory) as db:
            try:
                _user, token, _csrf = login(db, str(form.get("name", "")),
                                            str(form.get("password", "")), address)
            except TooManyAttempts as exc:
                error, status = str(exc), 429
            except AccountError as exc:
                error, status = str(exc), 401
        if error is not None:
            fresh = secrets.token_urlsafe(32)
            response = templates.TemplateResponse(
                request, "login.html", {"me": None, "login_token": fresh, "next": target,
                                        "error": error}, status_code=status)
            response.set_cookie(LOGIN_COOKIE, fresh, httponly=True, samesite="strict",
                                max_age=3600, secure=request.url.scheme == "https")
            return response
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https",
                            max_age=int(timedelta(hours=12).total_seconds()))
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    async def logout_submit(request: Request):
        me, _form_data = await _writer(request, "viewer")
        with transaction(factory) as db:
            logout(db, me.cookie)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- patients ---------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def patients_page(request: Request, q: str = ""):
        me = _identity(request)
        with transaction(factory) as db:
            query = select(Patient).order_by(Patient.identifier)
            if q:
                query = query.where(Patient.identifier.contains(q[:64]))
            rows = db.scalars(query.limit(500)).all()
            counts = dict(db.execute(select(Recommendation.patient_id, func.count())
                                     .group_by(Recommendation.patient_id)).all())
        return _page(request, "patients.html", me, patients=rows, counts=counts, q=q[:64])

    @app.post("/patients")
    async def patient_create(request: Request):
        me, form = await _writer(request)
        try:
            with transaction(factory) as db:
                patient = _new_patient(db, form, me)
                pid = patient.id
        except rec.RecordError as exc:
            return _page(request, "error.html", me, status=400,
                         message=str(exc))
        return RedirectResponse(f"/patients/{pid}", status_code=303)

    def _new_patient(db, form: dict, me: Identity) -> Patient:
        identifier = rec.check_identifier(str(form.get("identifier", "")))
        if db.scalar(select(Patient).where(Patient.identifier == identifier)) is not None:
            raise rec.RecordError(f"a patient with identifier {identifier!r} exists already")
        patient = Patient(identifier=identifier, note=rec.check_text(form.get("note"), "note"),
                          created_by=me.id)
        db.add(patient)
        db.flush()
        audit(db, me.id, "patient created", identifier, patient.id)
        return patient

    @app.get("/patients/{patient_id}", response_class=HTMLResponse)
    async def patient_page(request: Request, patient_id: int):
        me = _identity(request)
        with transaction(factory) as db:
            patient = _patient(db, patient_id)
            entries = list(patient.entries)
            names = dict(db.execute(select(User.id, User.name)).all())
            recs = db.scalars(select(Recommendation).where(
                Recommendation.patient_id == patient.id).order_by(
                Recommendation.id.desc())).all()
            summaries = [(r, json.loads(r.result_json)) for r in recs]
            jobs = db.scalars(select(Job).where(Job.patient_id == patient.id,
                                                Job.status != "done")
                              .order_by(Job.id.desc()).limit(20)).all()
            frame = rec.records_frame(patient)
        return _page(request, "patient.html", me, patient=patient, entries=entries,
                     names=names, summaries=summaries, jobs=jobs,
                     has_records=not frame.empty)

    @app.get("/patients/{patient_id}/plot.png")
    async def patient_plot(request: Request, patient_id: int):
        _identity(request)
        with transaction(factory) as db:
            patient = _patient(db, patient_id)
            frame = rec.records_frame(patient)
        return Response(_history_png(frame, patient.identifier), media_type="image/png")

    @app.get("/patients/{patient_id}/records.csv")
    async def patient_csv(request: Request, patient_id: int):
        _identity(request)
        with transaction(factory) as db:
            text = rec.records_csv(_patient(db, patient_id))
        return Response(text, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="patient-{patient_id}.csv"'})

    @app.post("/patients/{patient_id}/entries")
    async def entry_add(request: Request, patient_id: int):
        me, form = await _writer(request)
        makers = {"dose": rec.dose_entry, "level": rec.level_entry,
                  "covariate": rec.covariate_entry}
        kind = form.get("kind")
        try:
            if kind not in makers:
                raise rec.RecordError("kind: dose, level or covariate")
            with transaction(factory) as db:
                patient = _patient(db, patient_id)
                rec.add_entries(db, patient, [makers[kind](form, me.id)], me.id,
                                f"{kind} entered")
        except rec.RecordError as exc:
            return _page(request, "error.html", me, status=400,
                         message=str(exc), back=f"/patients/{patient_id}")
        return RedirectResponse(f"/patients/{patient_id}", status_code=303)

    @app.post("/patients/{patient_id}/upload")
    @app.post("/api/v1/patients/{patient_id}/upload")
    async def upload(request: Request, patient_id: int):
        me, form = await _writer(request)
        try:
            entries = await _uploaded_entries(form, me)
            with transaction(factory) as db:
                rec.add_entries(db, _patient(db, patient_id), entries, me.id,
                                f"{form.get('format', 'csv')} uploaded")
        except rec.RecordError as exc:
            if _is_api(request):
                return JSONResponse({"error": str(exc)}, status_code=400)
            return _page(request, "error.html", me, status=400,
                         message=str(exc), back=f"/patients/{patient_id}")
        if _is_api(request):
            return JSONResponse({"added": len(entries)}, status_code=201)
        return RedirectResponse(f"/patients/{patient_id}", status_code=303)

    async def _uploaded_entries(form: dict, me: Identity) -> list[Entry]:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise rec.RecordError("file: choose a file to upload")
        blob = await upload.read(rec.MAX_UPLOAD_BYTES + 1)
        kind = form.get("format", "csv")
        if kind == "csv":
            return rec.entries_from_csv(blob, me.id, str(form.get("id", "")).strip() or None)
        if kind == "fhir":
            return rec.entries_from_fhir(blob, me.id, str(form.get("drug", "")).strip())
        raise rec.RecordError("format: csv (NONMEM-format) or fhir (a FHIR R4 Bundle)")

    @app.post("/patients/{patient_id}/entries/{entry_id}/correct")
    async def entry_correct(request: Request, patient_id: int, entry_id: int):
        me, form = await _writer(request)
        makers = {"dose": rec.dose_entry, "level": rec.level_entry,
                  "covariate": rec.covariate_entry}
        try:
            with transaction(factory) as db:
                patient = _patient(db, patient_id)
                entry = db.get(Entry, entry_id)
                if entry is None or entry.patient_id != patient.id:
                    raise NotFound()
                new = (None if form.get("remove") in ("1", "on", "true")
                       else makers[entry.kind](form, me.id))
                rec.correct(db, patient, entry, new, str(form.get("reason", "")), me.id)
        except rec.RecordError as exc:
            return _page(request, "error.html", me, status=400,
                         message=str(exc), back=f"/patients/{patient_id}")
        return RedirectResponse(f"/patients/{patient_id}", status_code=303)

    # -- recommendations --------------------------------------------------------------------

    @app.get("/patients/{patient_id}/recommend", response_class=HTMLResponse)
    async def recommend_form(request: Request, patient_id: int):
        me = _identity(request)
        if not me.may("pharmacist"):
            raise Forbidden("a viewer may not ask for recommendations")
        with transaction(factory) as db:
            patient = _patient(db, patient_id)
        return _page(request, "recommend.html", me, patient=patient,
                     choices=state["choices"], error=None, form={})

    @app.post("/patients/{patient_id}/recommend")
    async def recommend_submit(request: Request, patient_id: int):
        me, form = await _writer(request)
        try:
            job_id = _queue(form, patient_id, me)
        except (RequestError, rec.RecordError) as exc:
            with transaction(factory) as db:
                patient = _patient(db, patient_id)
            return _page(request, "recommend.html", me, status=400, patient=patient,
                         choices=state["choices"], error=str(exc),
                         form={k: v for k, v in form.items() if isinstance(v, str)})
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    def _queue(form: dict, patient_id: int, me: Identity, rerun_of: Recommendation | None = None
               ) -> int:
        if rerun_of is None:
            models, options, seed, method = recommendation_request(form, fits)
            with transaction(factory) as db:
                patient = _patient(db, patient_id)
                frame = rec.records_frame(patient)
                if frame.empty or not (frame["EVID"] == 1).any():
                    raise rec.RecordError("the patient has no dose yet: enter the doses given "
                                          "(and any levels) first")
                payload = job_payload(models, frame.to_csv(index=False), options, seed, method)
                request_text = json.dumps({k: v for k, v in form.items()
                                           if isinstance(v, (str, int, float, list))
                                           and k != "csrf_token"})
        else:
            payload = job_payload(
                [{k: v for k, v in m.items() if k != "spec_hash"}
                 for m in json.loads(rerun_of.models)], rerun_of.records_csv,
                json.loads(rerun_of.request)["options"], rerun_of.seed, rerun_of.method)
            request_text = json.dumps({"rerun_of": rerun_of.id})
        with transaction(factory) as db:
            job = Job(patient_id=patient_id, user_id=me.id, status="queued",
                      request=request_text, payload=json.dumps(payload),
                      rerun_of=None if rerun_of is None else rerun_of.id)
            db.add(job)
            db.flush()
            job_id = job.id
            audit(db, me.id, "recommendation asked",
                  f"job {job_id}: {', '.join(m['name'] for m in payload['models'])}",
                  patient_id)
        _start(job_id, payload)
        return job_id

    def _start(job_id: int, payload: dict) -> None:
        with transaction(factory) as db:
            db.execute(update(Job).where(Job.id == job_id).values(status="running",
                                                                  started_at=utcnow()))
        with pool_lock:
            try:
                future = state["pool"].submit(run, payload)
            except BrokenProcessPool:
                # a worker died (killed, out of memory): the pool cannot be used again
                state["pool"] = pool(workers)
                future = state["pool"].submit(run, payload)
        future.add_done_callback(lambda f: threading.Thread(
            target=_finish, args=(job_id, payload, f), daemon=True).start())

    def _finish(job_id: int, payload: dict, future) -> None:
        """Record a finished job: the recommendation and the job's new state in one
        transaction, so there is never a half-written record."""
        try:
            outputs = future.result()
        except Exception as exc:           # noqa: BLE001 - a worker's crash is recorded
            outputs = {"error": f"the recommendation failed: {type(exc).__name__}: {exc}"}
        with transaction(factory) as db:
            job = db.get(Job, job_id)
            job.finished_at = utcnow()
            if "error" in outputs:
                job.status, job.error = "failed", str(outputs["error"])[:5000]
                audit(db, job.user_id, "recommendation failed", f"job {job_id}",
                      job.patient_id)
                return
            same = None
            if job.rerun_of is not None:
                original = db.get(Recommendation, job.rerun_of)
                same = answer(original.result_json) == answer(outputs["result_json"])
            row = Recommendation(
                patient_id=job.patient_id, user_id=job.user_id,
                request=json.dumps({"form": json.loads(job.request),
                                    "options": payload["options"]}),
                records_csv=payload["records_csv"], models=json.dumps(payload["models"]),
                popkin_version=__version__, seed=payload["seed"], method=payload["method"],
                result_json=outputs["result_json"], report_html=outputs["report_html"],
                report_pdf=outputs["report_pdf"], figure_png=outputs["figure_png"],
                seconds=outputs["seconds"], rerun_of=job.rerun_of, same_as_original=same)
            db.add(row)
            db.flush()
            job.status, job.recommendation_id = "done", row.id
            audit(db, job.user_id, "recommendation recorded",
                  f"recommendation {row.id} (job {job_id})", job.patient_id)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, job_id: int):
        me = _identity(request)
        with transaction(factory) as db:
            job = _row(db, Job, job_id)
            ahead = db.scalar(select(func.count()).select_from(Job).where(
                Job.status == "running", Job.id < job.id))
        if job.status == "done":
            return RedirectResponse(f"/recommendations/{job.recommendation_id}",
                                    status_code=303)
        elapsed = (utcnow() - (job.started_at or job.created_at)).total_seconds()
        return _page(request, "job.html", me, job=job, elapsed=elapsed, ahead=ahead)

    @app.get("/recommendations/{rid}", response_class=HTMLResponse)
    async def recommendation_page(request: Request, rid: int):
        me = _identity(request)
        with transaction(factory) as db:
            row = _row(db, Recommendation, rid)
            patient = db.get(Patient, row.patient_id)
            who = db.get(User, row.user_id)
        return _page(request, "recommendation.html", me, row=row, patient=patient, who=who,
                     result=json.loads(row.result_json), models=json.loads(row.models))

    @app.get("/recommendations/{rid}/{name}")
    async def recommendation_file(request: Request, rid: int, name: str):
        _identity(request)
        kinds = {"report.pdf": "application/pdf", "report.html": "text/html",
                 "recommendation.json": "application/json", "figure.png": "image/png"}
        if name not in kinds:
            raise NotFound()
        with transaction(factory) as db:
            row = _row(db, Recommendation, rid)
        content = {"report.pdf": row.report_pdf, "report.html": row.report_html,
                   "recommendation.json": row.result_json, "figure.png": row.figure_png}[name]
        disposition = "inline" if name == "figure.png" else "attachment"
        return Response(content, media_type=kinds[name], headers={
            "Content-Disposition": f'{disposition}; filename="recommendation-{rid}-{name}"'})

    @app.post("/recommendations/{rid}/rerun")
    @app.post("/api/v1/recommendations/{rid}/rerun")
    async def recommendation_rerun(request: Request, rid: int):
        me, _form_data = await _writer(request)
        with transaction(factory) as db:
            row = _row(db, Recommendation, rid)
        job_id = _queue({}, row.patient_id, me, rerun_of=row)
        if _is_api(request):
            return JSONResponse({"job": job_id}, status_code=202)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    # -- accounts and the audit trail -------------------------------------------------------

    @app.get("/users", response_class=HTMLResponse)
    async def users_page(request: Request):
        me = _identity(request)
        if not me.may("admin"):
            raise Forbidden("only an admin manages accounts")
        with transaction(factory) as db:
            users = db.scalars(select(User).order_by(User.name)).all()
        return _page(request, "users.html", me, users=users, roles=ROLES, error=None,
                     token=None)

    @app.post("/users")
    async def users_add(request: Request):
        me, form = await _writer(request, "admin")
        try:
            with transaction(factory) as db:
                add_user(db, str(form.get("name", "")), str(form.get("role", "")),
                         str(form.get("password", "")), by=me.id)
        except AccountError as exc:
            with transaction(factory) as db:
                users = db.scalars(select(User).order_by(User.name)).all()
            return _page(request, "users.html", me, status=400, users=users, roles=ROLES,
                         error=str(exc), token=None)
        return RedirectResponse("/users", status_code=303)

    @app.post("/users/{user_id}/active")
    async def users_active(request: Request, user_id: int):
        me, form = await _writer(request, "admin")
        with transaction(factory) as db:
            user = _row(db, User, user_id)
            if user.id == me.id:
                raise Forbidden("an admin cannot deactivate their own account")
            user.active = form.get("active") in ("1", "on", "true")
            audit(db, me.id, "user activated" if user.active else "user deactivated",
                  user.name)
        return RedirectResponse("/users", status_code=303)

    @app.get("/account", response_class=HTMLResponse)
    async def account_page(request: Request):
        me = _identity(request)
        return _page(request, "account.html", me, error=None, done=None)

    @app.post("/account/password")
    async def account_password(request: Request):
        me, form = await _writer(request, "viewer")
        try:
            with transaction(factory) as db:
                user = db.get(User, me.id)
                if not verify_password(user, str(form.get("current", ""))):
                    raise AccountError("the current password is wrong")
                if form.get("new") != form.get("again"):
                    raise AccountError("the two new passwords differ")
                set_password(db, user, str(form.get("new", "")), by=me.id,
                             keep_session=me.cookie)
        except AccountError as exc:
            return _page(request, "account.html", me, status=400, error=str(exc), done=None)
        return _page(request, "account.html", me, error=None,
                     done="Password changed; your other sessions were logged out.")

    @app.post("/tokens")
    async def token_new(request: Request):
        me, form = await _writer(request, "viewer")
        with transaction(factory) as db:
            token = new_api_token(db, db.get(User, me.id),
                                  rec.check_text(form.get("label"), "label")[:64])
        return _page(request, "token.html", me, token=token)

    @app.get("/audit", response_class=HTMLResponse)
    async def audit_page(request: Request, patient: int | None = None):
        me = _identity(request)
        with transaction(factory) as db:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(500)
            if patient is not None:
                query = query.where(AuditEvent.patient_id == patient)
            events = db.scalars(query).all()
            names = dict(db.execute(select(User.id, User.name)).all())
        return _page(request, "audit.html", me, events=events, names=names)

    # -- JSON API ---------------------------------------------------------------------------

    @app.get("/api/v1/models")
    async def api_models(request: Request):
        _identity(request)
        return state["choices"]

    @app.get("/api/v1/patients")
    async def api_patients(request: Request, identifier: str | None = None):
        _identity(request)
        with transaction(factory) as db:
            query = select(Patient).order_by(Patient.id)
            if identifier is not None:
                query = query.where(Patient.identifier == identifier[:64])
            return [_patient_json(p) for p in db.scalars(query.limit(1000)).all()]

    @app.post("/api/v1/patients")
    async def api_patient_create(request: Request):
        me, form = await _writer(request)
        try:
            with transaction(factory) as db:
                patient = _new_patient(db, form, me)
                data = _patient_json(patient)
        except rec.RecordError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(data, status_code=201)

    @app.get("/api/v1/patients/{patient_id}")
    async def api_patient(request: Request, patient_id: int):
        _identity(request)
        with transaction(factory) as db:
            patient = _patient(db, patient_id)
            return {**_patient_json(patient),
                    "entries": [_entry_json(e) for e in patient.entries],
                    "records": json.loads(rec.records_frame(patient).to_json(orient="records"))}

    @app.post("/api/v1/patients/{patient_id}/entries")
    async def api_entries(request: Request, patient_id: int):
        me, form = await _writer(request)
        makers = {"doses": rec.dose_entry, "levels": rec.level_entry,
                  "covariates": rec.covariate_entry}
        try:
            entries = []
            for key, make in makers.items():
                items = form.get(key, [])
                if not isinstance(items, list) or len(items) > rec.MAX_ENTRIES:
                    raise rec.RecordError(f"{key}: a list of at most {rec.MAX_ENTRIES} objects")
                for i, item in enumerate(items):
                    if not isinstance(item, dict):
                        raise rec.RecordError(f"{key}[{i}]: an object")
                    try:
                        entries.append(make(item, me.id, "api"))
                    except rec.RecordError as exc:
                        raise rec.RecordError(f"{key}[{i}]: {exc}") from None
            if not entries:
                raise rec.RecordError("give doses, levels or covariates")
            with transaction(factory) as db:
                rec.add_entries(db, _patient(db, patient_id), entries, me.id, "entries added")
        except rec.RecordError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"added": len(entries)}, status_code=201)

    @app.post("/api/v1/patients/{patient_id}/recommendations")
    async def api_recommend(request: Request, patient_id: int):
        me, form = await _writer(request)
        try:
            job_id = _queue(form, patient_id, me)
        except (RequestError, rec.RecordError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"job": job_id, "url": f"/api/v1/jobs/{job_id}"}, status_code=202)

    @app.get("/api/v1/jobs/{job_id}")
    async def api_job(request: Request, job_id: int):
        _identity(request)
        with transaction(factory) as db:
            job = _row(db, Job, job_id)
            return {"job": job.id, "status": job.status, "error": job.error or None,
                    "recommendation": job.recommendation_id,
                    "created_at": job.created_at.isoformat(),
                    "finished_at": job.finished_at and job.finished_at.isoformat()}

    @app.get("/api/v1/recommendations/{rid}")
    async def api_recommendation(request: Request, rid: int):
        _identity(request)
        with transaction(factory) as db:
            row = _row(db, Recommendation, rid)
            who = db.get(User, row.user_id)
            return {"id": row.id, "patient": row.patient_id, "asked_by": who.name,
                    "created_at": row.created_at.isoformat(), "seed": row.seed,
                    "method": row.method, "popkin_version": row.popkin_version,
                    "models": [{k: m[k] for k in ("name", "source", "spec_hash")}
                               for m in json.loads(row.models)],
                    "rerun_of": row.rerun_of, "same_as_original": row.same_as_original,
                    "seconds": row.seconds, "result": json.loads(row.result_json)}

    return app


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _safe_next(target: str) -> str:
    """Where to go after logging in: a path on this site only (never another host)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target \
            or any(ord(c) < 32 for c in target) or len(target) > 500:
        return "/"
    return target


def _patient_json(patient: Patient) -> dict:
    return {"id": patient.id, "identifier": patient.identifier, "note": patient.note,
            "created_at": patient.created_at.isoformat()}


def _entry_json(e: Entry) -> dict:
    fields = ("id", "kind", "time", "amount", "rate", "duration", "compartment", "interval",
              "additional", "steady_state", "value", "below_limit", "name", "text_value",
              "unit", "source", "note", "superseded_by", "superseded_reason")
    return {**{k: getattr(e, k) for k in fields}, "current": e.current,
            "created_at": e.created_at.isoformat()}


def _history_png(frame, identifier: str) -> bytes:
    from .._plotting import pyplot
    from ..report.html import figure_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if frame.empty:
        ax.text(0.5, 0.5, "no doses or levels yet", ha="center", va="center",
                transform=ax.transAxes)
    else:
        levels = frame[frame["EVID"] == 0]
        doses = frame[frame["EVID"] == 1]
        ax.plot(levels["TIME"], levels["DV"], "o", color="tab:blue", label="levels")
        for t in doses["TIME"]:
            ax.axvline(t, color="tab:gray", lw=0.8, alpha=0.6)
        ax.set_xlabel("time [h]")
        ax.set_ylabel("level")
        ax.plot([], [], color="tab:gray", lw=0.8, label="doses")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"patient {identifier}"[:80], fontsize=10)
    return figure_png(fig, dpi=90)
