"""The dashboard's HTTP side: pages, fragments the pages refresh live, event streams, actions.

Every page needs a person (a session from a token login, or a trusted proxy's header); every
action needs the operator role and the session's CSRF token, and is logged with the person's
name. Templates autoescape everything; the JavaScript sets text with textContent only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any
from urllib.parse import quote

import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from common import ids
from common import protocol as P
from common.auth import Security
from common.config import Config
from common.rpc import RequestError
from p4bus.web import views
from p4bus.web.bus import Bus, BusWatch, Feeds
from p4bus.web.metrics import WebMetrics
from p4bus.web.people import COOKIE, People, Session, csrf_ok
from p4bus.web.streams import Streams
from p4bus.web.tokens import TokenFile

log = structlog.get_logger("web")
PACKAGE = resources.files("p4bus.web")
WORKERS = 32
REAP_S = 30.0
Handler = Callable[[Request, str, Session], Awaitable[Response]]


class Web:
    def __init__(self, cfg: Config, security: Security | None) -> None:
        self.cfg = cfg
        self.security = security
        self.people = People(cfg.web, TokenFile(cfg.web_tokens_path))
        self.bus = Bus(cfg, security)
        self.templates = Environment(
            loader=FileSystemLoader(str(PACKAGE / "templates")), autoescape=select_autoescape(default=True)
        )
        self.templates.globals.update(age=views.age, duration=views.duration, when=views.when)
        self.streams: Streams | None = None  # made when the event loop runs
        self.metrics = WebMetrics(f"web-{ids.host_id()}")

    # ------------------------------------------------------------------ plumbing
    def app(self) -> Starlette:
        page = self._person
        routes = [
            Route("/healthz", self.healthz),
            Route("/favicon.ico", lambda _r: Response(status_code=204)),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", page(self.logout), methods=["POST"]),
            Route("/", page(self.index)),
            Route("/jobs", page(self.jobs_page)),
            Route("/jobs/table", page(self.jobs_table)),
            Route("/events", page(self._stream(lambda s: s.live_events))),
            Route("/jobs/{job_id}", page(self.job_page)),
            Route("/jobs/{job_id}/summary", page(self.job_summary)),
            Route("/jobs/{job_id}/events", page(self._stream(lambda s: s.job_events))),
            Route("/jobs/{job_id}/log.txt", page(self._stream(lambda s: s.job_log))),
            Route("/jobs/{job_id}/output/{cmd_id}", page(self._stream(lambda s: s.command_output))),
            Route("/jobs/{job_id}/{action}", page(self.job_action), methods=["POST"]),
            Route("/agents", page(self.agents_page)),
            Route("/agents/table", page(self.agents_table)),
            Route("/submit", page(self.submit), methods=["GET", "POST"]),
            Mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static"),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan, exception_handlers={RequestError: self._bus_error})

    async def _bus_error(self, request: Request, exc: Exception) -> Response:
        """The orchestrator or a master did not answer (or refused): one line, not a traceback."""
        message = exc.message if isinstance(exc, RequestError) else str(exc)
        code = 404 if isinstance(exc, RequestError) and exc.code in ("unknown_job", "unknown_cmd") else 502
        log.warning("web.bus_error", path=request.url.path, error=message)
        if "text/html" in request.headers.get("accept", ""):
            return self.render(request, "error.html", None, code, error=message)
        return PlainTextResponse(message, code)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        # Bus requests wait in worker threads (each with its own sockets): enough of them that a
        # slow answer for one page does not hold up the others.
        loop.set_default_executor(ThreadPoolExecutor(WORKERS, thread_name_prefix="bus"))
        watch = BusWatch(self.cfg, self.security, loop)
        watch.start()
        feeds = Feeds(self.cfg, self.security, loop)
        self.streams = Streams(self.bus, feeds, watch)
        reaper = asyncio.create_task(self._reap(feeds))
        ticker = asyncio.create_task(self.metrics.ticker())
        log.info("web.ready", url=self.cfg.web_url(), orchestrators=self.cfg.client_orchestrators())
        try:
            yield
        finally:
            reaper.cancel()
            ticker.cancel()
            watch.stopping.set()
            feeds.stop()

    def _stream(self, pick: Callable[[Streams], Callable[[Request], Awaitable[Response]]]) -> Handler:
        async def handler(request: Request, _sid: str, _s: Session) -> Response:
            assert self.streams is not None  # the lifespan has run before any request
            return await pick(self.streams)(request)

        return handler

    @staticmethod
    async def _reap(feeds: Feeds) -> None:
        while True:
            await asyncio.sleep(REAP_S)
            feeds.reap()

    def _person(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            peer = request.client.host if request.client else None
            got = self.people.session(request.cookies.get(COOKIE), peer, dict(request.headers))
            if got is None:
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return RedirectResponse(f"/login?next={request.url.path}", 303)
                return PlainTextResponse("not logged in: log in at /login with a token from `p4bus web token add`", 401)
            sid, session = got
            response = await handler(request, sid, session)
            if request.cookies.get(COOKIE) != sid:
                self._set_cookie(response, sid)
            return response

        return endpoint

    def _set_cookie(self, response: Response, sid: str) -> None:
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(self.cfg.web.session_ttl_s),
            httponly=True,
            samesite="strict",
            secure=self.cfg.web.cookie_secure,
        )

    def render(
        self, request: Request, name: str, session: Session | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        html = self.templates.get_template(name).render(request=request, session=session, **ctx)
        return HTMLResponse(html, status, headers=SECURITY_HEADERS)

    # ------------------------------------------------------------------ login
    async def healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok")

    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"  # never a redirect to another site
        if request.method == "GET":
            return self.render(request, "login.html", None, next=nxt, error="")
        form = await request.form()
        got = self.people.login(str(form.get("token", "")))
        if got is None:
            log.warning("web.login_refused", peer=request.client.host if request.client else None)
            return self.render(
                request,
                "login.html",
                None,
                401,
                next=nxt,
                error="unknown token: ask for one (`p4bus web token add NAME`)",
            )
        sid, session = got
        log.info("web.login", person=session.person.name, role=session.person.role)
        response = RedirectResponse(nxt, 303)
        self._set_cookie(response, sid)
        return response

    async def logout(self, request: Request, sid: str, session: Session) -> Response:
        form = await request.form()
        if not csrf_ok(session, str(form.get("csrf", ""))):
            return self._forbidden(session, "logout", "", "missing or wrong CSRF token")
        self.people.logout(sid)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response

    # ------------------------------------------------------------------ jobs
    async def index(self, _request: Request, _sid: str, _s: Session) -> Response:
        return RedirectResponse("/jobs", 303)

    async def _jobs(self, request: Request) -> dict[str, Any]:
        state = request.query_params.get("state", "")
        workspace = request.query_params.get("workspace", "")
        jobs = await self.bus.orch(lambda oc: oc.jobs(include_finished=True, limit=500))
        return {
            "jobs": views.filter_jobs(jobs, state, workspace),
            "queues": views.queues(jobs),
            "states": sorted({j.state for j in jobs} | {state} - {""}),
            "workspaces": sorted({j.workspace for j in jobs} | {workspace} - {""}),
            "state": state,
            "workspace": workspace,
        }

    async def jobs_page(self, request: Request, _sid: str, session: Session) -> Response:
        return self.render(request, "jobs.html", session, **await self._jobs(request))

    async def jobs_table(self, request: Request, _sid: str, session: Session) -> Response:
        return self.render(request, "_jobs_table.html", session, **await self._jobs(request))

    async def _job(self, job_id: str) -> dict[str, Any]:
        job = await self.bus.orch(lambda oc: oc.job(job_id))
        host = ""
        if job.conflicts and job.agent:
            agents = await self.bus.masters(lambda mc: mc.agents())
            host = next((a.host for a in agents if a.agent_id == job.agent), "")
        steps = views.resolve_steps(job, self.cfg.orchestrator.workspaces.get(job.workspace), host)
        return {"job": job, "actions": views.actions(job), "stages": views.stages(job), "steps": steps}

    async def job_page(self, request: Request, _sid: str, session: Session) -> Response:
        job_id = request.path_params["job_id"]
        try:
            ctx = await self._job(job_id)
        except RequestError as exc:
            return self.render(
                request, "error.html", session, 404 if exc.code == "unknown_job" else 502, error=exc.message
            )
        return self.render(request, "job.html", session, error=request.query_params.get("error", ""), **ctx)

    async def job_summary(self, request: Request, _sid: str, session: Session) -> Response:
        try:
            ctx = await self._job(request.path_params["job_id"])
        except RequestError as exc:
            return PlainTextResponse(exc.message, 404 if exc.code == "unknown_job" else 502)
        return self.render(request, "_job_summary.html", session, **ctx)

    async def job_action(self, request: Request, _sid: str, session: Session) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        form = await request.form()
        if not csrf_ok(session, str(form.get("csrf", "")) or request.headers.get("x-csrf-token")):
            return self._forbidden(
                session, action, job_id, "missing or wrong CSRF token: reload the page and try again"
            )
        if not session.person.may_act:
            return self._forbidden(
                session, action, job_id, f"{session.person.name} is a {session.person.role}: only operators act"
            )
        stage = str(form.get("from_stage", "")) or None
        calls = {
            "resume": lambda oc: oc.resume(job_id),
            "cancel": lambda oc: oc.cancel(job_id),
            "revert": lambda oc: oc.cancel(job_id, revert=True),
            "retry": lambda oc: oc.retry(job_id, stage),
            "approve": lambda oc: oc.approve(job_id),
            "cleanup": lambda oc: oc.cleanup(job_id),
        }
        if action not in calls:
            return PlainTextResponse(f"no action {action!r} (one of: {', '.join(calls)})", 404)
        try:
            view: P.JobView = await self.bus.orch(calls[action])
        except RequestError as exc:
            log.info("web.action", person=session.person.name, action=action, job=job_id, refused=exc.message)
            return RedirectResponse(f"/jobs/{job_id}?error={quote(exc.message, safe='')}", 303)
        log.info(
            "web.action", person=session.person.name, action=action, job=job_id, state=view.state, from_stage=stage
        )
        return RedirectResponse(f"/jobs/{job_id}", 303)

    def _forbidden(self, session: Session, action: str, job_id: str, why: str) -> Response:
        log.warning(
            "web.action_refused",
            person=session.person.name,
            role=session.person.role,
            action=action,
            job=job_id,
            why=why,
        )
        return PlainTextResponse(f"refused: {why}", 403)

    async def submit(self, request: Request, _sid: str, session: Session) -> Response:
        ctx: dict[str, Any] = {"form": {}, "error": "", "workspaces": sorted(self.cfg.orchestrator.workspaces)}
        if request.method == "GET":
            return self.render(request, "submit.html", session, **ctx)
        form = {k: str(v).strip() for k, v in (await request.form()).items()}
        ctx["form"] = form
        if not csrf_ok(session, form.get("csrf")):
            return self._forbidden(session, "submit", "", "missing or wrong CSRF token: reload the page and try again")
        if not session.person.may_act:
            return self._forbidden(
                session, "submit", "", f"{session.person.name} is a {session.person.role}: only operators act"
            )
        fields: dict[str, Any] = {
            k: form.get(k) or None for k in ("workspace", "source", "target", "branch_spec", "agent", "pool")
        }
        fields["desc"] = form.get("desc", "")
        fields["by"] = session.person.name  # the job records who submitted it
        if form.get("change"):
            if not form["change"].isdigit() or int(form["change"]) < 1:
                ctx["error"] = f"change {form['change']!r} is not a change number (a whole number from 1)"
                return self.render(request, "submit.html", session, 400, **ctx)
            fields["change"] = int(form["change"])
        try:
            view = await self.bus.orch(lambda oc: oc.submit(**fields))
        except RequestError as exc:
            ctx["error"] = exc.message  # the orchestrator's refusal, word for word as the CLI prints it
            return self.render(request, "submit.html", session, 400, **ctx)
        log.info("web.action", person=session.person.name, action="submit", job=view.job_id, workspace=view.workspace)
        return RedirectResponse(f"/jobs/{view.job_id}", 303)

    # ------------------------------------------------------------------ agents
    async def _agents(self) -> dict[str, Any]:
        agents = await self.bus.masters(lambda mc: mc.agents())
        return {"agents": sorted(agents, key=lambda a: (not a.alive, a.agent_id)), "now": time.time()}

    async def agents_page(self, request: Request, _sid: str, session: Session) -> Response:
        return self.render(request, "agents.html", session, **await self._agents())

    async def agents_table(self, request: Request, _sid: str, session: Session) -> Response:
        return self.render(request, "_agents_table.html", session, **await self._agents())


# No inline script or style anywhere, so the policy can forbid them: injected markup cannot run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
