"""Templates and schedules in the orchestrator: their requests, and the tick that runs them.

Templates live in the orchestrator's store, not the TOML configuration: services only read
their configuration, and a template is checked against the workspaces the orchestrator knows
when it is saved, so a mistake is refused at `p4bus template add`, not at 2 a.m.

Every run is one transaction: the job, its link to the template, and the schedule's new state
(next time, last job, last change) commit together. A crash before the commit starts nothing;
after it, the job is there and the schedule knows it, so a restart never starts it again.
"""

from __future__ import annotations

import msgspec

from common import logs
from common import protocol as P
from orchestrator import schedule as S
from orchestrator.change_poll import Answer, ChangePoller, Question
from orchestrator.engine import Effects, Engine, JobError
from orchestrator.pipeline import validate_params
from orchestrator.pipeline.model import JobParams
from orchestrator.store import Store, TemplateStore

log = logs.get("orchestrator.scheduler")


class Scheduler:
    def __init__(self, store: Store, engine: Engine, poller: ChangePoller) -> None:
        self.store = store
        self.t = TemplateStore(store)
        self.engine = engine
        self.poller = poller
        self.polling: set[str] = set()  # schedules with a question out

    def close(self) -> None:
        self.poller.close()

    # ------------------------------------------------------------------ submit

    def submit(self, req: P.Submit, schedule: str = "") -> tuple[str, Effects]:
        """A job, from the request alone or from its template with the request's overrides."""
        if req.template is None:
            return self.engine.submit(req)
        template = self._template(req.template)
        with self.store.tx():
            job_id, eff = self.engine.submit(S.apply_template(template, req))
            self.t.link_job(job_id, template.name, schedule)
        return job_id, eff

    # ------------------------------------------------------------------ requests

    def handle(self, msg: P.TemplateRequest) -> P.Base:
        now = self.engine.clock()
        match msg:
            case P.PutTemplate():
                self._check_template(msg.template)
                if not msg.replace and self.t.template(msg.template.name):
                    raise JobError(
                        f"template {msg.template.name!r} exists: pass --replace to change it (or remove it first)"
                    )
                with self.store.tx():
                    self.t.put_template(msg.template, now)
                return P.TemplateReply(req_id=msg.req_id, template=msg.template)
            case P.GetTemplate():
                return P.TemplateReply(req_id=msg.req_id, template=self._template(msg.name))
            case P.ListTemplates():
                return P.TemplateList(req_id=msg.req_id, templates=self.t.templates())
            case P.RemoveTemplate():
                template = self._template(msg.name)
                users = [s.name for s in self.t.schedules(template=msg.name)]
                if users:
                    raise JobError(
                        f"template {msg.name!r} is run by schedule(s) {', '.join(users)}: remove them first "
                        f"(p4bus schedule remove NAME)"
                    )
                with self.store.tx():
                    self.t.remove_template(msg.name)
                return P.TemplateReply(req_id=msg.req_id, template=template)
            case P.PutSchedule():
                return P.ScheduleReply(req_id=msg.req_id, schedule=self._put_schedule(msg, now))
            case P.ListSchedules():
                return P.ScheduleList(req_id=msg.req_id, schedules=self.t.schedules())
            case P.RemoveSchedule():
                gone = self._schedule(msg.name)
                with self.store.tx():
                    self.t.remove_schedule(msg.name)
                self.polling.discard(msg.name)
                return P.ScheduleReply(req_id=msg.req_id, schedule=gone)

    def _put_schedule(self, msg: P.PutSchedule, now: float) -> P.Schedule:
        s = msg.schedule
        errors = S.schedule_errors(s)
        if errors:
            raise JobError("; ".join(errors))
        self._template(s.template)
        old = self.t.schedule(s.name)
        if old and not msg.replace:
            raise JobError(f"schedule {s.name!r} exists: pass --replace to change it (or remove it first)")
        # Only the definition comes from the request; the state is the orchestrator's.
        fresh = P.Schedule(
            name=s.name,
            template=s.template,
            cron=s.cron,
            timezone=s.timezone,
            on_change=s.on_change,
            poll_s=s.poll_s,
        )
        with self.store.tx():
            self.t.put_schedule(msgspec.structs.replace(fresh, next_at=S.first_run(fresh, now)), now)
        self.polling.discard(s.name)
        return self._schedule(s.name)

    def _template(self, name: str) -> P.Template:
        t = self.t.template(name)
        if t is None:
            known = ", ".join(t.name for t in self.t.templates()) or "none"
            raise JobError(f"no template {name!r} (known: {known}): add it with `p4bus template add {name} ...`")
        return t

    def _schedule(self, name: str) -> P.Schedule:
        s = self.t.schedule(name)
        if s is None:
            known = ", ".join(s.name for s in self.t.schedules()) or "none"
            raise JobError(f"no schedule {name!r} (known: {known}): see `p4bus schedule list`")
        return s

    def _workspace_name(self, req: P.Submit) -> str:
        """The workspace a template's job runs in: its own, or the only one configured."""
        names = self.engine.conf.workspaces
        if req.workspace is None and len(names) != 1:
            raise JobError(
                f"the template names no workspace and {len(names)} are configured: "
                f"give --workspace ({', '.join(sorted(names)) or 'none configured'})"
            )
        name = req.workspace or next(iter(names))
        self.engine.workspace(name)  # refused, with the known ones, when not configured
        return name

    def _check_template(self, t: P.Template) -> None:
        """Refuse a template a job could not be submitted from, with the submit's own messages."""
        errors = S.name_errors("template", t.name)
        req = S.apply_template(t, P.Submit(req_id=""))
        try:
            ws = self.engine.workspace(self._workspace_name(req))
        except JobError as exc:
            errors.append(str(exc))
        else:
            params = JobParams(
                workspace=ws, source=req.source, target=req.target, branch_spec=req.branch_spec, desc=req.desc
            )
            errors += validate_params(params)
        if errors:
            raise JobError("; ".join(errors))

    # ------------------------------------------------------------------ the tick

    def tick(self, now: float) -> Effects:
        """Start what is due; pick up the answers of polls."""
        eff = Effects()
        for answer in self.poller.answers():
            eff.add(self._answered(answer, now))
        for s in self.t.schedules():
            if s.name in self.polling or s.next_at > now:
                continue  # (decide says the same; this spares the active-job query every second)
            action = S.decide(s, now, self.t.active_job(s.template))
            if action is None:
                continue
            if action.kind == "run":
                eff.add(self._run(s, None, action.next_at, now))
            elif action.kind == "poll":
                self._poll(s, action.next_at, now)
            elif action.note != s.note:
                with self.store.tx():
                    self.t.schedule_waits(s.name, action.next_at, action.note, now)
        return eff

    def _run(self, s: P.Schedule, change: int | None, next_at: float, now: float) -> Effects:
        try:
            with self.store.tx():
                job_id, eff = self.submit(P.Submit(req_id="", template=s.template, change=change), s.name)
                self.t.schedule_ran(s.name, job_id, change, next_at, now)
        except JobError as exc:
            # The template no longer fits the configuration (a workspace removed): say so, and
            # try at the next time rather than every tick.
            log.warning("schedule.refused", schedule=s.name, error=str(exc))
            with self.store.tx():
                self.t.schedule_waits(s.name, next_at, f"could not start a job: {exc}", now)
            return Effects()
        log.info("schedule.ran", schedule=s.name, job=job_id, change=change)
        return eff

    def _poll(self, s: P.Schedule, next_at: float, now: float) -> None:
        template = self.t.template(s.template)
        assert template is not None  # a template with schedules cannot be removed
        req = S.apply_template(template, P.Submit(req_id=""))
        try:
            ws = self.engine.workspace(self._workspace_name(req))
        except JobError as exc:
            with self.store.tx():
                self.t.schedule_waits(s.name, next_at, f"cannot poll: {exc}", now)
            return
        wc = self.engine.conf.workspaces[ws.name]
        with self.store.tx():
            self.t.schedule_waits(s.name, next_at, s.note, now)
        self.polling.add(s.name)
        self.poller.ask(Question(s.name, ws, req.agent or wc.agent, req.pool or wc.pool, req.source, req.branch_spec))

    def _answered(self, a: Answer, now: float) -> Effects:
        self.polling.discard(a.key)
        s = self.t.schedule(a.key)
        if s is None or not s.on_change:
            return Effects()  # removed or redefined while the question was out
        if a.change is None:
            with self.store.tx():
                self.t.schedule_waits(s.name, s.next_at, f"poll failed: {a.error}", now)
            return Effects()
        if not S.is_newer(a.change, s.last_change) or self.t.active_job(s.template):
            if s.note:
                with self.store.tx():
                    self.t.schedule_waits(s.name, s.next_at, "", now)
            return Effects()
        return self._run(s, a.change, s.next_at, now)
