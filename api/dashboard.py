"""The web dashboard: page shells at / and /ui/…, and the script and styles they load.

Every page is a shell with no data in it (api/auth.py serves the "dashboard" blueprint to
anyone). The data comes from the JSON API itself, called by api/static/dashboard.js with
the key the user signed in with as a Bearer header, so the dashboard can show and do
exactly what that key can, and nothing more. docs/dashboard.md says why it is built so.
"""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request
from spectree import SpecTree
from werkzeug.wrappers import Response as BaseResponse

# The script and styles are files of api/static/, shipped with the package (nothing comes
# from the internet), under /static/…: spectree leaves that prefix out of /openapi.json.
blueprint = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static/dashboard",
)

# spectree documents every route of the app in /openapi.json except those another SpecTree
# instance decorates: the pages are decorated by this one (never registered, so it serves
# no document), which keeps them out of the API's document and out of the schema tests.
PAGES = SpecTree("flask")
page = PAGES.validate(skip_validation=True)

# The pages run only our own script and styles: a key kept in sessionStorage is worth
# guarding against injected script. Charts are shown from blob: URLs the script makes.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@blueprint.after_request
def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def shell(template: str, **context: str) -> str:
    """A page shell; `context` only carries what the URL already says (an id)."""
    return render_template(f"dashboard/{template}", api_root=request.script_root, **context)


@blueprint.get("/")
@page
def home() -> BaseResponse:
    """The front door: the dashboard's jobs page."""
    return redirect(f"{request.script_root}/ui/", 302)


@blueprint.get("/ui/")
@page
def jobs() -> str:
    return shell("jobs.html", page="jobs")


@blueprint.get("/ui/jobs/<job_id>")
@page
def job(job_id: str) -> str:
    return shell("job.html", page="job", job_id=job_id)


@blueprint.get("/ui/pools")
@page
def pools() -> str:
    return shell("pools.html", page="pools")


@blueprint.get("/ui/lab")
@page
def lab() -> str:
    return shell("lab.html", page="lab")


@blueprint.get("/ui/lab/compare")
@page
def compare() -> str:
    return shell("compare.html", page="compare")


@blueprint.get("/ui/lab/<experiment_id>")
@page
def experiment(experiment_id: str) -> str:
    return shell("experiment.html", page="experiment", experiment_id=experiment_id)


@blueprint.get("/ui/signin")
@page
def signin() -> str:
    return shell("signin.html", page="signin")
