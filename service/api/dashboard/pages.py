"""The dashboard: server-rendered pages over the same reports, signed in with an API key.

Pages are HTML, so their errors are HTML pages too; the JSON API keeps its one error shape.
"""

from __future__ import annotations

import hmac
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import MediaType, RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from service.api.dashboard.session import COOKIE, Session, SessionSigner
from service.api.dashboard.view import PERIODS, DashboardView, dashboard_view, task_view
from service.core.clock import utcnow
from service.core.errors import CascadeError, Unauthorized
from service.reports.audit import request_audit
from service.runtime import Runtime
from service.tasks.calibration import Calibration
from service.tenancy.keys import Scope, admin_scope, authenticate, is_admin_key, team_scope

WEB = Path(__file__).resolve().parent / "web"
TARGET = Decimal("0.98")  # the agreement the task page recommends a threshold for
# Scripts and styles only from this origin: the page data is JSON in a non-executable script element.
_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def usd(value: Decimal | None, places: int = 6) -> str:
    if value is None:
        return "—"
    return f"${value:,.{places}f}"


def pct(value: Decimal | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def num(value: Decimal | None) -> str:
    return "—" if value is None else f"{value:f}"


def _page(name: str, status_code: int = 200, **context: Any) -> Template:
    return Template(
        template_name=name,
        context={"usd": usd, "pct": pct, "num": num, **context},
        status_code=status_code,
        headers=_HEADERS,
        media_type=MediaType.HTML,
    )


def _signer(request: Request[Any, Any, Any]) -> SessionSigner:
    signer: SessionSigner = request.app.state.sessions
    return signer


async def _reader(request: Request[Any, Any, Any], runtime: Runtime, team: str | None) -> tuple[Scope, str]:
    """The signed-in reader's scope and a label for the header; Unauthorized if there is no live session."""
    session = _signer(request).read(request.cookies.get(COOKIE))
    if session is None:
        raise Unauthorized("sign in")
    if session.key_id is None:
        admin = runtime.settings.admin_key
        fingerprint = _signer(request).fingerprint(admin.get_secret_value()) if admin else None
        if fingerprint is None or not hmac.compare_digest(session.admin_fingerprint or "", fingerprint):
            raise Unauthorized("the admin key has changed; sign in again")
        return await admin_scope(runtime.db, team), "admin"
    caller = await authenticate(runtime.db, key_id=session.key_id)
    if caller is None:
        raise Unauthorized("this key has been revoked; sign in again")
    return team_scope(caller, team), f"team {caller.team_name}"


def _error_page(exc: CascadeError, who: str | None = None) -> Template:
    return _page("error.html.j2", exc.status_code, status=exc.status_code, message=exc.message, who=who)


def _charts(view: DashboardView) -> dict[str, Any]:
    def f(value: Decimal | None, scale: int = 1) -> float | None:
        return None if value is None else float(value * scale)

    return {
        "escalation": {
            "labels": [b.key for b in view.escalations.buckets],
            "rate": [f(b.escalation_rate, 100) for b in view.escalations.buckets],
            "requests": [b.requests for b in view.escalations.buckets],
        },
        "caps": {
            "labels": [c.label for c in view.caps],
            "spent": [f(c.spent_usd) for c in view.caps],
            "reserved": [f(c.reserved_usd) for c in view.caps],
            "remaining": [f(c.remaining_usd) or 0 for c in view.caps],
        },
        "cost": {
            "labels": [f"up to {usd(b.upper)}" for b in view.cost_bins],
            "counts": [b.counts["requests"] for b in view.cost_bins],
        },
        "confidence": {
            "labels": [f"{b.lower:.2f}-{b.upper:.2f}" for b in view.confidence_bins],
            "kept": [b.counts["kept"] for b in view.confidence_bins],
            "escalated": [b.counts["escalated"] for b in view.confidence_bins],
        },
    }


@get("/", include_in_schema=False)
async def dashboard(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    days: Annotated[int, QueryParameter(ge=1, le=90)] = 7,
    team: Annotated[str | None, QueryParameter()] = None,
) -> Template:
    try:
        scope, who = await _reader(request, runtime, team)
    except Unauthorized:
        return _page("login.html.j2", who=None, error=None)
    except CascadeError as exc:
        return _error_page(exc)
    try:
        view = await dashboard_view(runtime, scope, days, utcnow())
    except CascadeError as exc:
        return _error_page(exc, who)
    label = team or (scope.team_name if not scope.is_admin else "all teams")
    return _page(
        "dashboard.html.j2", view=view, who=who, team=team, periods=PERIODS, scope_label=label, charts=_charts(view)
    )


def _calibration_chart(report: Calibration) -> dict[str, Any]:
    def f(value: Decimal | None) -> float | None:
        return None if value is None else float(value)

    return {
        "labels": [f"{b.lower:.2f}-{b.upper:.2f}" for b in report.bins],
        "agreement": [f(b.agreement) for b in report.bins],
        "confidence": [f(b.mean_confidence) for b in report.bins],
        "requests": [b.requests for b in report.bins],
    }


@get("/tasks/{name:str}", include_in_schema=False)
async def task_page(
    request: Request[Any, Any, Any],
    name: FromPath[str],
    runtime: NamedDependency[Runtime],
    version: Annotated[int | None, QueryParameter(ge=1)] = None,
    team: Annotated[str | None, QueryParameter()] = None,
) -> Template | Redirect:
    try:
        scope, who = await _reader(request, runtime, team)
    except Unauthorized:
        return Redirect("/dashboard")
    except CascadeError as exc:
        return _error_page(exc)
    try:
        report = await task_view(runtime, scope, name, version, TARGET, utcnow())
    except CascadeError as exc:
        return _error_page(exc, who)
    return _page("task.html.j2", c=report, who=who, team=team, chart=_calibration_chart(report))


@get("/requests/{request_id:uuid}", include_in_schema=False)
async def request_page(
    request: Request[Any, Any, Any], request_id: FromPath[uuid.UUID], runtime: NamedDependency[Runtime]
) -> Template | Redirect:
    try:
        scope, who = await _reader(request, runtime, None)
    except Unauthorized:
        return Redirect("/dashboard")
    except CascadeError as exc:
        return _error_page(exc)
    try:
        row, attempts = await request_audit(runtime.db, scope, request_id)
    except CascadeError as exc:
        return _error_page(exc, who)
    return _page("request.html.j2", r=row, attempts=attempts, who=who)


def _cross_site(request: Request[Any, Any, Any]) -> bool:
    """A form posted from another site (login CSRF); browsers say so in Sec-Fetch-Site or Origin."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    return origin is not None and origin != "null" and urlsplit(origin).netloc != request.headers.get("host")


_CROSS_SITE = "This form can only be sent from the dashboard itself."


@post("/login", include_in_schema=False, status_code=303)
async def login(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    if _cross_site(request):
        return _page("error.html.j2", 403, status=403, message=_CROSS_SITE, who=None)
    key = (data.get("key") or "").strip()
    admin = runtime.settings.admin_key
    session: Session | None = None
    try:
        if key and admin is not None and is_admin_key(key, admin.get_secret_value()):
            session = Session(None, _signer(request).fingerprint(admin.get_secret_value()))
        elif key and (caller := await authenticate(runtime.db, key)) is not None:
            session = Session(caller.key_id)
    except CascadeError as exc:
        return _error_page(exc)
    if session is None:
        return _page("login.html.j2", 401, who=None, error="That key is not valid, or it has been revoked.")
    signer = _signer(request)
    cookie = Cookie(
        key=COOKIE,
        value=signer.issue(session),
        max_age=signer.ttl_s,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=runtime.settings.session_cookie_secure,
    )
    return Redirect("/dashboard", status_code=303, cookies=[cookie])


@post("/logout", include_in_schema=False, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    if _cross_site(request):
        return _page("error.html.j2", 403, status=403, message=_CROSS_SITE, who=None)
    return Redirect("/dashboard", status_code=303, cookies=[Cookie(key=COOKIE, value="", max_age=0, path="/dashboard")])


def _invalid(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Pages answer bad query strings and forms with an HTML page too."""
    return _page("error.html.j2", 400, status=400, message=f"Invalid request: {exc.detail}", who=None)


dashboard_router = Router(
    path="/dashboard",
    exception_handlers={ValidationException: _invalid},
    route_handlers=[
        dashboard,
        request_page,
        task_page,
        login,
        logout,
        create_static_files_router(path="/static", directories=[WEB / "static"], include_in_schema=False),
    ],
)
