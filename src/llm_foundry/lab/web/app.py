"""The web lab's FastAPI app: the same actions as `foundry lab ...`, through the same engine.

Every module action reads and writes the learner's progress with ``lab.progress.Progress`` and
runs tests with ``lab.results.run_tests`` (through the run queue), exactly as the command line
does; the page (``static/``) only renders. Who the learner is decides one thing: their lab home
(the folder of their progress database and workspaces), see :class:`Learner`.

Security (both modes): a strict Content-Security-Policy (everything from this server), a Host
check (a loopback server answers only loopback names: no DNS rebinding), a CSRF token on every
state-changing request, a bounded request body. Classroom mode adds accounts and sessions
(``accounts.py``); a learner's requests can only ever name their own lab home.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import itertools
import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ...utils.errors import FoundryError
from ...utils.io import atomic_write_text
from .. import sandbox
from ..module import Module, all_modules, find_module
from ..progress import Progress, lab_home
from ..results import limits_for, run_tests
from ..text import LANGS, pick, say
from ..workspace import (MAX_FILE_BYTES, built_on_files, copy_built_on, default_workspace, read_learner_files,
                         write_workspace)
from . import accounts, charts, tools
from .runs import Job, RunQueue
from .store import Store

STATIC = Path(__file__).parent / "static"
COOKIE = "foundry_lab_session"
MAX_BODY = 2 << 20
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self' data:; worker-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")
REVIEW_AFTER_DAYS = 7  # a module done this long ago is "due for review" on the dashboard


class LabError(HTTPException):
    """A one-line error for the page (``{"error": message}`` with ``status``)."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(status, message)
        self.extra = extra


@dataclass
class Settings:
    """How the server runs (from `foundry lab web`'s options).

    Attributes:
        classroom: accounts and per-learner lab homes (else one learner, the command line's home).
        root: the lab home; the web database and the classroom's users live in ``root/web``.
        workers: test runs at once.
        wall_s: the time limit of a test run instead of each module's (None: the module's).
        allowed_hosts: Host names answered besides the loopback ones and the bound address (``*``: any,
            the default of a non-loopback bind, where the accounts are the protection).
    """

    classroom: bool = False
    root: Path = field(default_factory=lab_home)
    workers: int = 2
    wall_s: float | None = None
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Learner:
    """The person behind a request: their name, role, CSRF token and lab home."""

    name: str
    role: str
    csrf: str
    home: Path
    classroom: bool

    def workspace(self, module: Module, progress: Progress) -> Path:
        """The module's workspace: in classroom mode always inside the learner's home; alone, the one
        `foundry lab start` remembered (or would write)."""
        if self.classroom:
            return self.home / "workspaces" / module.name
        return progress.workspace(module.number) or default_workspace(module)


# ----------------------------------------------------------------------------- helpers
def _md(text: str, module: Module) -> str:
    """A module's Markdown as HTML: raw HTML in it escaped, figure links pointed at this server."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return html.replace('src="figures/', f'src="api/modules/{module.number}/figures/')


def _body_text(value: Any, what: str, limit: int = 20_000, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        raise LabError(400, f"{what}: a non-empty text is needed")
    if len(value) > limit:
        raise LabError(413, f"{what}: longer than {limit} characters")
    return value.strip()


def _fold(mine: list[str], ref: list[str], context: int = 3) -> list[dict]:
    """A line diff as rows: ``same``/``del``/``add`` lines, and ``fold`` for a run of unchanged lines
    longer than ``2 * context`` (its first and last ``context`` lines stay)."""
    rows: list[dict] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, mine, ref, autojunk=False).get_opcodes():
        if tag == "equal":
            n = i2 - i1
            keep = [(k, k) for k in range(n)]
            if n > 2 * context + 1:
                head, tail = keep[:context] if rows else [], keep[n - context:] if i2 < len(mine) else []
                rows += [{"kind": "same", "a": i1 + k + 1, "b": j1 + k + 1, "text": mine[i1 + k]} for k, _ in head]
                rows.append({"kind": "fold", "count": n - len(head) - len(tail), "a": i1 + len(head) + 1})
                rows += [{"kind": "same", "a": i1 + k + 1, "b": j1 + k + 1, "text": mine[i1 + k]} for k, _ in tail]
            else:
                rows += [{"kind": "same", "a": i1 + k + 1, "b": j1 + k + 1, "text": mine[i1 + k]} for k, _ in keep]
            continue
        rows += [{"kind": "del", "a": i + 1, "text": mine[i]} for i in range(i1, i2)]
        rows += [{"kind": "add", "b": j + 1, "text": ref[j]} for j in range(j1, j2)]
    return rows


def _sections(module: Module, name: str) -> list[str | None]:
    """For each line of the reference of ``name`` (0-based), the solution block it belongs to (None
    outside every block): the reference is the solution with marker lines dropped, so walking both
    in step pairs them."""
    solution = module.solution(name).splitlines()
    reference = module.reference(name).splitlines()
    owner = [None] * len(solution)
    for b in module.blocks(name):
        for i in range(b.start, b.end):
            owner[i] = b.id
    out, j = [], 0
    for i, line in enumerate(solution):
        if j < len(reference) and line == reference[j]:
            out.append(owner[i])
            j += 1
    return out + [None] * (len(reference) - len(out))


def _state_dict(state) -> dict:
    return {"unlocked": state.unlocked, "passed": state.passed, "reflected": state.reflected,
            "skipped": state.skipped, "done": state.done, "attempts": state.attempts,
            "last_status": state.last_status, "hints": state.hints, "reference_viewed": state.reference_viewed,
            "reference_before_pass": state.reference_before_pass, "time_s": round(state.time_s),
            "started": state.workspace is not None}


# ----------------------------------------------------------------------------- the app
def create_app(settings: Settings) -> FastAPI:
    """The web lab for ``settings``."""
    store = Store(settings.root / "web" / "web.db")
    limiter = accounts.LoginLimiter()
    local_csrf = secrets.token_urlsafe(24)  # single-user mode: one token, handed to the page by /api/me

    def execute(job: Job) -> dict:
        home, lang, files, sources = job.payload
        module = find_module(job.module, lang)
        limits = limits_for(module)
        if settings.wall_s is not None:
            limits = dataclasses.replace(limits, wall_s=settings.wall_s)
        results = run_tests(module, files, lang, limits=limits, on_output=job.output)
        if sources:
            results["built_on"] = sources
        with Progress.open(home) as progress:
            results["unlocked"] = progress.record_attempt(module.number, results)
        return results

    runs = RunQueue(settings.workers, execute)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runs.stop()

    app = FastAPI(title="foundry lab web", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runs = runs

    # ------------------------------------------------------------------ guards
    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = _host_name(request.headers.get("host") or "")
        server = request.scope.get("server") or ("", 0)
        if "*" not in settings.allowed_hosts and host not in (*LOOPBACK_NAMES, server[0], *settings.allowed_hosts):
            return PlainTextResponse("unknown Host: add it with --allowed-host", status_code=421)
        if "transfer-encoding" in request.headers:  # a body of unknown length: every client of this page sends one
            return JSONResponse({"error": "a request body needs a Content-Length"}, status_code=411)
        try:
            if int(request.headers.get("content-length") or 0) > MAX_BODY:
                return JSONResponse({"error": f"request body larger than {MAX_BODY >> 20} MiB"}, status_code=413)
        except ValueError:
            return JSONResponse({"error": "bad Content-Length"}, status_code=400)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        extra = getattr(exc, "extra", {})
        return JSONResponse({"error": str(exc.detail), **extra}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(FoundryError)
    async def foundry_error(request: Request, exc: FoundryError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    def lang_of(request: Request) -> str:
        lang = request.headers.get("x-lab-lang") or request.query_params.get("lang") or ""
        if lang in LANGS:
            return lang
        return "zh" if (request.headers.get("accept-language") or "").lower().startswith("zh") else "en"

    def who(request: Request, write: bool = False) -> Learner:
        """The learner of ``request`` (401 without a session in classroom mode; 403 on a write without
        the CSRF token)."""
        if settings.classroom:
            user = accounts.session_user(store, request.cookies.get(COOKIE))
            if user is None:
                raise LabError(401, say(lang_of(request), "please log in", "请先登录"))
            learner = Learner(user.name, user.role, user.csrf, settings.root / "web" / "users" / user.name, True)
        else:
            learner = Learner("local", "learner", local_csrf, settings.root, False)
        if write and not secrets.compare_digest(request.headers.get("x-csrf-token", ""), learner.csrf):
            raise LabError(403, "missing or wrong CSRF token (reload the page)")
        return learner

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise LabError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise LabError(400, "the request body must be a JSON object")
        return data

    def module_of(number: int, lang: str, progress: Progress, need_unlocked: bool = True) -> Module:
        try:
            module = find_module(number, lang)
        except FoundryError as e:
            raise LabError(404, str(e)) from None
        if need_unlocked and not progress.state(number).unlocked:
            raise LabError(403, say(lang, f"module {number} is locked: pass module {number - 1} and answer its "
                                          "reflection, or skip it", f"模块 {number} 尚未解锁：先通过模块 {number - 1}"
                                    "并回答它的反思问题，或跳过它"))
        return module

    def open_workspace(learner: Learner, module: Module, progress: Progress, lang: str) -> Path:
        """The module's workspace, written (as `foundry lab start` does) when it is not there yet."""
        folder = learner.workspace(module, progress)
        if not folder.is_dir() or any(not (folder / f).exists() for f in module.files):
            write_workspace(module, folder, lang)
        if progress.workspace(module.number) != folder:
            progress.start(module.number, folder)
        return folder

    # ------------------------------------------------------------------ pages and session
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/me")
    def me(request: Request):
        if settings.classroom:
            user = accounts.session_user(store, request.cookies.get(COOKIE))
            if user is None:
                return {"mode": "classroom", "user": None}
            return {"mode": "classroom", "user": user.name, "role": user.role, "csrf": user.csrf,
                    "workers": settings.workers}
        return {"mode": "single", "user": "local", "role": "learner", "csrf": local_csrf, "workers": settings.workers}

    @app.post("/api/login")
    async def login(request: Request):
        if not settings.classroom:
            raise LabError(400, "this lab has no accounts (single-user mode)")
        data = await body(request)
        name, password = data.get("name"), data.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise LabError(400, "name and password are needed")
        client = f"ip:{request.client.host if request.client else '?'}"
        wait = limiter.retry_after(client, f"user:{name}")
        if wait > 0:
            raise LabError(429, say(lang_of(request), f"too many failed logins: try again in {wait:.0f} s",
                                    f"登录失败次数过多：请 {wait:.0f} 秒后再试"), retry_after=round(wait))
        role = await asyncio.to_thread(accounts.check_password, store, name, password)
        if role is None:
            limiter.failed(client, f"user:{name}")
            raise LabError(401, say(lang_of(request), "wrong name or password", "用户名或密码错误"))
        token = accounts.open_session(store, name)
        response = JSONResponse({"user": name, "role": role})
        response.set_cookie(COOKIE, token, max_age=accounts.SESSION_S, httponly=True, samesite="strict", path="/")
        return response

    @app.post("/api/logout")
    def logout(request: Request):
        who(request, write=True)
        accounts.close_session(store, request.cookies.get(COOKIE))
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ dashboard
    @app.get("/api/dashboard")
    def dashboard(request: Request):
        learner, lang = who(request), lang_of(request)
        modules = all_modules()
        out, recent, days = [], [], set()
        week_ago = time.time() - 7 * 86400
        week_s = 0.0
        with Progress.open(learner.home) as progress:
            for m in modules:
                s = progress.state(m.number)
                attempts = progress.attempts(m.number)
                events = progress.events(m.number)
                stamps = [a["at"] for a in attempts] + [e["at"] for e in events if e["kind"] != "unlock"]
                days.update(date.fromtimestamp(t) for t in stamps)
                week_s += _active_seconds(sorted(t for t in stamps if t >= week_ago))
                recent += [{"module": m.number, "at": a["at"], "status": a["status"], "passed": a["passed"],
                            "total": a["total"]} for a in attempts[-5:]]
                last = max(stamps, default=None)
                builds_on = [b["module"] for b in m.meta.get("builds_on", []) if isinstance(b, dict) and "module" in b]
                out.append({"number": m.number, "title": pick(m.title, lang), "minutes": m.meta.get("minutes"),
                            "slug": m.slug, "builds_on": builds_on, "library": m.meta.get("library", []),
                            "state": _state_dict(s), "last_active": last,
                            "notes": sum(e["kind"] == "note" for e in events),
                            "due": bool(s.done and last and time.time() - last > REVIEW_AFTER_DAYS * 86400)})
        recent.sort(key=lambda r: -r["at"])
        return {"modules": out, "recent": recent[:8], "badges": _badges(out, lang),
                "streak": _streak(days), "week_minutes": round(week_s / 60),
                "done": sum(m["state"]["done"] or m["state"]["skipped"] for m in out), "total": len(out)}

    @app.get("/api/search")
    def search(request: Request, q: str = ""):
        who(request)
        lang = lang_of(request)
        words = q.strip().lower()
        if not words:
            return {"results": []}
        found = []
        for m in all_modules():
            title = pick(m.title, lang)
            texts = [("title", title)] + [("goal", pick(g, lang)) for g in m.meta.get("goals", [])] + \
                    [("task", pick(t.get("title", t["id"]), lang)) for t in m.tasks]
            for kind in ("intro", "task"):
                texts += [(kind, line) for line in m.text(kind, lang).splitlines() if line.strip()]
            for kind, text in texts:
                if words in text.lower():
                    found.append({"module": m.number, "title": title, "kind": kind, "text": text.strip()[:200]})
        return {"results": found[:50]}

    # ------------------------------------------------------------------ a module
    @app.get("/api/modules/{number}")
    def module_page(request: Request, number: int):
        learner, lang = who(request), lang_of(request)
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            folder = open_workspace(learner, module, progress, lang)
            progress.touch(number)
            files = read_learner_files(module, folder, lang)
            state = progress.state(number)
            attempts = progress.attempts(number)
            reflections = progress.events(number, "reflection")
        tasks = []
        for t in module.tasks:
            hints = t.get("hints", [])
            opened = state.hints.get(str(t["id"]), 0)
            tasks.append({"id": str(t["id"]), "title": pick(t.get("title", t["id"]), lang), "levels": len(hints),
                          "opened": [pick(h, lang) for h in hints[:opened]], "links": t.get("links", [])})
        reflection = [{"question": pick(q["question"], lang)} for q in module.reflection]
        if reflections:  # model answers are shown after submitting
            for q, src, mine in zip(reflection, module.reflection, reflections[-1]["answers"]):
                q["answer"], q["mine"] = pick(src["answer"], lang), mine
        return {"number": number, "name": module.name, "title": pick(module.title, lang),
                "intro_html": _md(module.text("intro", lang), module), "task_html": _md(module.text("task", lang), module),
                "goals": [pick(g, lang) for g in module.meta.get("goals", [])],
                "requires": module.meta.get("requires", []), "library": module.meta.get("library", []),
                "files": [{"name": n, "content": d.decode("utf-8", "replace")} for n, d in files.items()],
                "tasks": tasks, "reflection": reflection, "state": _state_dict(state), "workspace": str(folder),
                "attempts": [{"index": i, "at": a["at"], "status": a["status"], "passed": a["passed"],
                              "total": a["total"], "duration_s": a["duration_s"]} for i, a in enumerate(attempts)]}

    @app.get("/api/modules/{number}/figures/{name}")
    def figure(number: int, name: str):
        try:
            module = find_module(number)
        except FoundryError as e:
            raise LabError(404, str(e)) from None
        path = module.path / "figures" / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise LabError(404, "no such figure")
        return FileResponse(path, headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})

    @app.put("/api/modules/{number}/files/{name}")
    async def save_file(request: Request, number: int, name: str):
        learner, lang = who(request, write=True), lang_of(request)
        data = await body(request)
        content = data.get("content")
        if not isinstance(content, str):
            raise LabError(400, "content: a text is needed")
        if len(content.encode("utf-8")) > MAX_FILE_BYTES:
            raise LabError(413, f"a learner file is at most {MAX_FILE_BYTES >> 20} MiB")
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            if name not in module.files:  # only the module's own files: never a path the browser picks
                raise LabError(404, f"module {number} has no file {name!r} (files: {', '.join(module.files)})")
            folder = open_workspace(learner, module, progress, lang)
            path = folder / name
            if path.is_symlink():
                raise LabError(400, f"{name} is a link in the workspace; the lab writes only plain files")
            atomic_write_text(path, content)
            progress.touch(number)
        return {"saved": name, "bytes": len(content.encode("utf-8"))}

    # ------------------------------------------------------------------ test runs
    @app.post("/api/modules/{number}/runs")
    def start_run(request: Request, number: int):
        learner, lang = who(request, write=True), lang_of(request)
        owner = f"{learner.home}"
        if runs.active(owner) is not None:
            raise LabError(409, say(lang, "a test run of yours is already waiting or running",
                                    "你已有一个测试运行在排队或进行中"))
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            folder = open_workspace(learner, module, progress, lang)
            files = read_learner_files(module, folder, lang)
            # the learner's own files of the earlier modules this one builds on (this learner's only)
            earlier, sources = built_on_files(
                module, lambda n: learner.workspace(find_module(n, lang), progress), lang)
        if earlier:
            copy_built_on(folder, earlier)
            files = {**earlier, **files}
        job = runs.submit(owner, number, (learner.home, lang, files, sources))
        return {"id": job.id, "position": runs.position(job), "ahead": runs.ahead(job), "workers": runs.workers}

    @app.get("/api/runs/{job_id}/events")
    async def run_events(request: Request, job_id: str):
        learner = who(request)
        job = runs.get(job_id)
        if job is None or job.owner != f"{learner.home}":
            raise LabError(404, "no such run")
        lang = lang_of(request)

        async def stream():
            sent, position = 0, None
            while True:
                now = runs.position(job)
                if now != position:
                    position = now
                    yield _sse("queue", {"position": now, "ahead": runs.ahead(job), "workers": runs.workers})
                events = job.events[sent:]
                sent += len(events)
                text = "".join(t for k, t in events if k == "output")
                if text:
                    yield _sse("output", {"text": text})
                if any(k == "start" for k, _ in events):
                    yield _sse("start", {})
                if any(k == "done" for k, _ in events):
                    if job.error:
                        yield _sse("failed", {"error": say(lang, f"the lab could not run the tests: {job.error}",
                                                           f"实验室无法运行测试：{job.error}")})
                    else:
                        yield _sse("result", {**job.results, "queue": {**job.timing(), "workers": runs.workers}})
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/modules/{number}/attempts/{index}")
    def attempt(request: Request, number: int, index: int):
        learner, lang = who(request), lang_of(request)
        with Progress.open(learner.home) as progress:
            module_of(number, lang, progress, need_unlocked=False)
            attempts = progress.attempts(number)
        if not 0 <= index < len(attempts):
            raise LabError(404, f"module {number} has no attempt {index}")
        return {**attempts[index]["results"], "at": attempts[index]["at"]}

    @app.get("/api/modules/{number}/charts")
    def module_charts(request: Request, number: int, attempt: int | None = None):
        """The charts of attempt ``attempt`` (default: the latest that logged any metric)."""
        learner, lang = who(request), lang_of(request)
        with Progress.open(learner.home) as progress:
            module_of(number, lang, progress, need_unlocked=False)
            attempts = progress.attempts(number)
        if attempt is not None:
            if not 0 <= attempt < len(attempts):
                raise LabError(404, f"module {number} has no attempt {attempt}")
            return {"attempt": attempt, **charts.gather(attempts[attempt]["results"])}
        for i in range(len(attempts) - 1, -1, -1):
            found = charts.gather(attempts[i]["results"])
            if any(found.values()):
                return {"attempt": i, **found}
        return {"attempt": None, **charts.gather({})}

    # ------------------------------------------------------------------ hints, diff, reflection, skip
    @app.post("/api/modules/{number}/hints")
    async def hint(request: Request, number: int):
        learner, lang = who(request, write=True), lang_of(request)
        task_id = str((await body(request)).get("task", ""))
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            task = next((t for t in module.tasks if str(t["id"]) == task_id), None)
            if task is None:
                raise LabError(404, f"module {number} has no task {task_id!r}")
            hints = task.get("hints", [])
            level = progress.open_hint(number, task_id, len(hints))
        if level is None:
            raise LabError(409, say(lang, f"every hint of task {task_id} is open", f"任务 {task_id} 的提示已全部打开"))
        return {"task": task_id, "level": level, "levels": len(hints), "text": pick(hints[level - 1], lang)}

    @app.post("/api/modules/{number}/diff")
    async def diff(request: Request, number: int):
        learner, lang = who(request, write=True), lang_of(request)
        confirm = bool((await body(request)).get("confirm"))
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            files = read_learner_files(module, open_workspace(learner, module, progress, lang), lang)
            state = progress.state(number)
            if not state.passed and not confirm:
                raise LabError(409, say(lang, f"Module {number} has not passed yet; seeing the reference now takes "
                                              "away the finding-out. Show it?",
                                        f"模块 {number} 还没有通过；现在看参考答案会少了自己找到答案的过程。仍要显示吗？"),
                               confirm=True)
            before = progress.view_reference(number)
        out = []
        for name in module.files:
            mine = files[name].decode("utf-8", "replace").splitlines()
            ref = module.reference(name).splitlines()
            rows, owner = _fold(mine, ref), _sections(module, name)

            def label(b: int | None) -> str | None:
                return owner[b - 1] if b and 0 < b <= len(owner) else None

            for k, row in enumerate(rows):  # each change is labelled with its section (the step-by-step mode)
                row["section"] = label(row.get("b"))
                if row["kind"] == "del":  # a removed line: the section of the lines that replace it, or of what follows
                    hunk = [r for r in itertools.takewhile(lambda r: r["kind"] in ("del", "add"), rows[k:])]
                    after = next((r.get("b") for r in rows[k:] if r.get("b")), None)
                    row["section"] = next((label(r["b"]) for r in hunk if label(r.get("b"))), None) or label(after)
            out.append({"file": name, "rows": rows, "same": mine == ref, "reference": module.reference(name)})
        return {"files": out, "before_pass": before, "library": module.meta.get("library", [])}

    @app.get("/api/modules/{number}/similarity")
    def similarity(request: Request, number: int):
        learner, lang = who(request), lang_of(request)
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            files = read_learner_files(module, open_workspace(learner, module, progress, lang), lang)
            state = progress.state(number)
        out = []
        for name in module.files:
            score = tools.similarity(files[name].decode("utf-8", "replace"), module.reference(name))
            out.append({"file": name, **score})
        close = any(max(f["tokens"], f["ast"]) >= tools.SIMILAR for f in out)
        # advisory only: flagged when the reference was seen before the pass, never an accusation
        return {"files": out, "flagged": close and state.reference_before_pass and state.passed,
                "reference_before_pass": state.reference_before_pass, "threshold": tools.SIMILAR}

    @app.post("/api/modules/{number}/reflection")
    async def reflect(request: Request, number: int):
        learner, lang = who(request, write=True), lang_of(request)
        answers = (await body(request)).get("answers")
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            if not (isinstance(answers, list) and len(answers) == len(module.reflection)
                    and all(isinstance(a, str) and a.strip() for a in answers)):
                raise LabError(400, say(lang, f"{len(module.reflection)} non-empty answers are needed",
                                        f"需要 {len(module.reflection)} 个非空回答"))
            answers = [_body_text(a, "answer") for a in answers]
            unlocked = progress.submit_reflection(number, answers)
            state = progress.state(number)
        return {"unlocked": unlocked, "state": _state_dict(state),
                "answers": [{"question": pick(q["question"], lang), "answer": pick(q["answer"], lang), "mine": a}
                            for q, a in zip(module.reflection, answers)]}

    @app.post("/api/modules/{number}/skip")
    def skip(request: Request, number: int):
        learner, lang = who(request, write=True), lang_of(request)
        with Progress.open(learner.home) as progress:
            module_of(number, lang, progress)
            return {"unlocked": progress.skip(number)}

    # ------------------------------------------------------------------ notes and the learning log
    @app.post("/api/modules/{number}/notes")
    async def note(request: Request, number: int):
        learner, lang = who(request, write=True), lang_of(request)
        text = _body_text((await body(request)).get("text"), "note")
        with Progress.open(learner.home) as progress:
            module_of(number, lang, progress, need_unlocked=False)
            progress.add_note(number, text)
        return {"ok": True}

    @app.get("/api/log")
    def learning_log(request: Request):
        learner, lang = who(request), lang_of(request)
        lines = [f"# {say(lang, 'Learning log', '学习日志')} — {learner.name}", ""]
        with Progress.open(learner.home) as progress:
            for m in all_modules():
                events, attempts = progress.events(m.number), progress.attempts(m.number)
                if not events and not attempts:
                    continue
                lines += [f"## {m.number}. {pick(m.title, lang)}", ""]
                items = [(a["at"], f"{say(lang, 'test run', '测试')}: {a['status']} ({a['passed']}/{a['total']})")
                         for a in attempts]
                for e in events:
                    detail = {"note": e.get("text"), "hint": f"{e.get('task')} #{e.get('level')}",
                              "reflection": " / ".join(e.get("answers", []))}.get(e["kind"], "")
                    items.append((e["at"], f"{e['kind']}" + (f": {detail}" if detail else "")))
                lines += [f"- {datetime.fromtimestamp(at).strftime('%Y-%m-%d %H:%M')} {text}" for at, text in sorted(items)]
                lines.append("")
        return PlainTextResponse("\n".join(lines), media_type="text/markdown; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="learning-log.md"'})

    # ------------------------------------------------------------------ mentor review and discussion
    @app.post("/api/modules/{number}/review")
    async def request_review(request: Request, number: int):
        learner, lang = who(request, write=True), lang_of(request)
        message = _body_text((await body(request)).get("message", ""), "message", empty_ok=True)
        with Progress.open(learner.home) as progress:
            module = module_of(number, lang, progress)
            files = read_learner_files(module, open_workspace(learner, module, progress, lang), lang)
            status = progress.state(number).last_status
        rid = store.add_review(learner.name, number, message, {k: v.decode("utf-8", "replace") for k, v in files.items()},
                               status)
        return {"id": rid}

    @app.get("/api/reviews")
    def reviews(request: Request):
        learner = who(request)
        return {"reviews": store.reviews(None if learner.role == "mentor" else learner.name), "role": learner.role}

    @app.post("/api/reviews/{rid}/comments")
    async def comment(request: Request, rid: int):
        learner = who(request, write=True)
        text = _body_text((await body(request)).get("text"), "comment")
        mine = store.rows("SELECT user FROM reviews WHERE id = ?", (rid,))
        if not mine or (learner.role != "mentor" and mine[0]["user"] != learner.name):
            raise LabError(404, "no such review")
        store.add_comment(rid, learner.name, text)
        return {"ok": True}

    @app.get("/api/modules/{number}/posts")
    def posts(request: Request, number: int):
        who(request)
        return {"threads": store.threads(number)}

    @app.post("/api/modules/{number}/posts")
    async def post(request: Request, number: int):
        learner = who(request, write=True)
        data = await body(request)
        parent = data.get("parent")
        if parent is not None and not (isinstance(parent, int) and store.rows(
                "SELECT 1 FROM posts WHERE id = ? AND module = ? AND parent IS NULL", (parent, number))):
            raise LabError(404, "no such thread")
        title = "" if parent is not None else _body_text(data.get("title"), "title", 200)
        pid = store.add_post(number, parent, learner.name, title, _body_text(data.get("text"), "text"))
        return {"id": pid}

    # ------------------------------------------------------------------ editor services
    @app.post("/api/editor/complete")
    async def complete(request: Request):
        who(request, write=True)
        data = await body(request)
        source, line, column = data.get("source"), data.get("line"), data.get("column")
        if not isinstance(source, str) or len(source) > tools.MAX_SOURCE:
            raise LabError(400, "source: a text (at most 1 MiB) is needed")
        if not (isinstance(line, int) and isinstance(column, int)):
            raise LabError(400, "line and column (numbers) are needed")
        return {"items": await asyncio.to_thread(tools.complete, source, line, column)}

    @app.post("/api/editor/lint")
    async def lint(request: Request):
        who(request, write=True)
        data = await body(request)
        source = data.get("source")
        if not isinstance(source, str) or len(source) > tools.MAX_SOURCE:
            raise LabError(400, "source: a text (at most 1 MiB) is needed")
        return {"findings": await asyncio.to_thread(tools.lint, source, str(data.get("name") or "code.py"))}

    @app.post("/api/editor/format")
    async def format_(request: Request):
        who(request, write=True)
        data = await body(request)
        source = data.get("source")
        if not isinstance(source, str) or len(source) > tools.MAX_SOURCE:
            raise LabError(400, "source: a text (at most 1 MiB) is needed")
        return {"source": await asyncio.to_thread(tools.format_source, source, str(data.get("name") or "code.py"))}

    @app.get("/api/sandbox")
    def sandbox_layers(request: Request):
        who(request)
        return {"layers": sandbox.probe()}

    return app


def _host_name(header: str) -> str:
    """The name of a Host header, without its port (``[::1]:8765`` -> ``[::1]``)."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0]


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _active_seconds(stamps: list[float], idle_s: float = 30 * 60) -> float:
    """Time between consecutive actions, gaps longer than ``idle_s`` left out (as progress.py counts)."""
    return sum(b - a for a, b in zip(stamps, stamps[1:]) if b - a <= idle_s)


def _streak(days: set[date]) -> int:
    """Consecutive days with activity, ending today (or yesterday: today is not over)."""
    day = date.today()
    if day not in days:
        day -= timedelta(days=1)
    n = 0
    while day in days:
        n, day = n + 1, day - timedelta(days=1)
    return n


# the source design's milestones, by module slug: (when, en, zh)
MILESTONES = {"tokenizer": ("done", "tokenizer done", "分词器完成"),
              "midtrain": ("passed", "first mid-training run", "首次跑通中期训练"),
              "rl": ("done", "RL elective done", "强化学习选修完成")}


def _badges(modules: list[dict], lang: str) -> list[dict]:
    """Milestones reached: the first pass, the source design's named milestones (tokenizer done,
    first mid-training run, RL elective done), every other module done, counts of modules done."""
    out = []
    if any(m["state"]["passed"] for m in modules):
        out.append({"id": "first-pass", "text": say(lang, "first module passed", "第一个模块通过")})
    for m in modules:
        when, en, zh = MILESTONES.get(m["slug"], ("done", f"{m['title']}: done", f"{m['title']}：完成"))
        if m["state"][when]:
            out.append({"id": f"module-{m['number']}", "text": say(lang, en, zh)})
    done = sum(m["state"]["done"] for m in modules)
    out += [{"id": f"done-{k}", "text": say(lang, f"{k} modules done", f"完成 {k} 个模块")}
            for k in (3, 8, 16) if done >= k]
    return out
