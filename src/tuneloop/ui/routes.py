"""The dashboard's pages: Jinja2 shells whose scripts read and change everything through the public API.

A page is only the frame (navigation, forms with their labels, empty tables and charts); its module in
``static/js`` fills it from ``/v1/...`` with the API key, so what the dashboard shows is exactly what a
client of the API sees. With an API key set, the pages need a session: ``POST /ui/login`` with the key
in the ``Authorization`` header (never in a URL) sets an HttpOnly cookie holding an HMAC of the key (not
the key), valid for the browser session; the page keeps the key itself in ``sessionStorage`` for its
data requests, which the API checks as any other. Static files (the pages' code, no data) are public.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from tuneloop import __version__
from tuneloop.api.errors import error_response
from tuneloop.config import Settings

HERE = Path(__file__).parent
COOKIE = "tuneloop_session"
#: (path, template, title) of each page, in the navigation's order (the first is the home page).
PAGES = [
    ("/ui/jobs", "jobs", "Jobs"),
    ("/ui/jobs/new", "new_job", "New job"),
    ("/ui/files", "files", "Files"),
    ("/ui/models", "models", "Models"),
    ("/ui/playground", "playground", "Playground"),
    ("/ui/evals", "evals", "Evals"),
]


def session_token(api_key: str) -> str:
    """The session cookie's value for ``api_key``: an HMAC of it, so the cookie never holds the key."""
    return hmac.new(api_key.encode(), b"tuneloop dashboard session v1", hashlib.sha256).hexdigest()


def mount_dashboard(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard from ``app``: ``/`` and ``/ui/...`` (pages) and ``/ui/static/...`` (their code)."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.include_router(_router(settings))


def _router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    # autoescape on for every template (select_autoescape's default would skip *.html.j2 names)
    templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                                       autoescape=True))  # fmt: skip
    token = session_token(settings.api_key) if settings.api_key else None

    def signed_in(request: Request) -> bool:
        return token is None or hmac.compare_digest(request.cookies.get(COOKIE, ""), token)

    def page(request: Request, template: str, title: str, **context) -> Response:
        if not signed_in(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)
        context = {"title": title, "pages": PAGES, "path": request.url.path, "version": __version__,
                   "auth": token is not None, **context}  # fmt: skip
        return templates.TemplateResponse(request, f"{template}.html.j2", context, headers=NO_STORE)

    @router.get("/")
    @router.get("/ui")
    @router.get("/ui/")
    def home() -> RedirectResponse:
        return RedirectResponse(PAGES[0][0], status_code=303)

    @router.get("/ui/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/ui/jobs") -> Response:
        target = next if next.startswith("/ui/") and not next.startswith("//") else PAGES[0][0]
        context = {"title": "Sign in", "pages": [], "path": "", "version": __version__, "auth": token is not None,
                   "next": target}  # fmt: skip
        return templates.TemplateResponse(request, "login.html.j2", context, headers=NO_STORE)

    @router.post("/ui/login")
    def login(request: Request) -> Response:
        """Sign in with ``Authorization: Bearer KEY``: a session cookie, or the API's 401."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if token is not None and not (scheme.lower() == "bearer" and hmac.compare_digest(session_token(given.strip()),
                                                                                         token)):  # fmt: skip
            return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        response = Response(status_code=204)
        if token is not None:  # no Max-Age: the cookie ends with the browser session
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    @router.post("/ui/logout")
    def logout() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    for path, template, title in PAGES:
        router.add_api_route(path, _page_route(page, template, title), methods=["GET"], response_class=HTMLResponse)

    @router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str) -> Response:
        return page(request, "job", f"Job {job_id}", job_id=job_id)

    return router


def _page_route(page, template: str, title: str):
    def route(request: Request) -> Response:
        return page(request, template, title)

    route.__name__ = f"page_{template}"
    return route


#: Pages are frames around live data: never cached (a cached page would outlive a sign-out).
NO_STORE = {"Cache-Control": "no-store"}
