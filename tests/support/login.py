"""Logging in as a browser does, without a browser: the login form posted with the
edge's own Origin, the session cookie read from the answer.

    cookie = login_cookie(edge.url, "admin", ADMIN_PASSWORD)   # "ocedge_session=…"
    httpx.get(edge.url + "/session", headers={"Cookie": cookie})
"""

from __future__ import annotations

import httpx

from edge.session import COOKIE_NAME, SECURE_COOKIE_NAME

# What Chromium sends with a form POST from the edge's own login page.
FORM_POST = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate",
             "Sec-Fetch-Dest": "document", "Accept": "text/html,*/*;q=0.8",
             "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"}


def post_login(url: str, username: str, password: str, code: str | None = None,
               next_path: str = "/", origin: str | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    """POST the login form to the edge at ``url`` (its own Origin unless ``origin``)."""
    form = {"username": username, "password": password, "next": next_path}
    if code is not None:
        form["code"] = code
    sent = {**FORM_POST, "Origin": origin or url, **(headers or {})}
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        return client.post("/_edge/login", data=form, headers=sent)


def cookie_from(response: httpx.Response) -> str:
    """The session cookie ``response`` set, as a Cookie header value ("name=value")."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name in (COOKIE_NAME, SECURE_COOKIE_NAME) and rest.split(";")[0]:
            return f"{name}={rest.split(';')[0]}"
    raise AssertionError(f"no session cookie set ({response.status_code}): "
                         f"{response.headers.get_list('set-cookie')}")


def login_cookie(url: str, username: str, password: str, code: str | None = None) -> str:
    """Log in on the login page; the session cookie as a Cookie header value."""
    response = post_login(url, username, password, code)
    assert response.status_code == 303, (response.status_code, response.text[:300])
    return cookie_from(response)
