"""The chat page's routes over HTTP (no browser): public, strict CSP, self-contained, optional."""

from __future__ import annotations

import re

import httpx
import pytest

import page_support as ps
from lib_mlx.server.page import CONTENT_SECURITY_POLICY, page_url

STATIC = {
    "/": "text/html",
    "/static/app.js": "text/javascript",
    "/static/style.css": "text/css",
    "/static/favicon.svg": "image/svg+xml",
}


@pytest.fixture(scope="module")
def chat_model(make_model):
    return make_model("qwen3", chains=ps.CHAT_CHAINS)


def test_page_and_assets_are_public_with_a_strict_csp(serve, chat_model):
    with serve(chat_model) as s:
        for path, media in STATIC.items():
            r = httpx.get(s.info.base_url + path)  # no Authorization header
            assert r.status_code == 200, (path, r.text)
            assert r.headers["content-type"].startswith(media)
            csp = r.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["default-src"] == "'self'" and directives["connect-src"] == "'self'"
            assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
            assert "unsafe" not in csp and "*" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert httpx.head(s.info.base_url + "/").status_code == 200
        # The page loosens nothing else: the API still wants the token.
        assert httpx.get(s.info.base_url + "/v1/models").status_code == 401


def test_page_config_says_what_the_page_may_offer(serve, chat_model):
    with serve(chat_model) as s:
        r = httpx.get(s.info.base_url + "/page/config.json")
        assert r.status_code == 200
        assert r.json() == {
            "model": s.info.model_id,
            "auth": True,
            "media": [],  # a text-only model: the page hides its attach button
            "thinking": {"supported": True, "default": True},
        }
        assert s.info.api_key not in r.text
    with serve(chat_model, thinking_enabled=False, auth="none") as s:
        body = httpx.get(s.info.base_url + "/page/config.json").json()
        assert body["auth"] is False and body["thinking"] == {"supported": True, "default": False}


def test_chat_page_option_turns_it_off(serve, chat_model):
    with serve(chat_model, chat_page=False) as s:
        for path in [*STATIC, "/page/config.json"]:
            r = httpx.get(s.info.base_url + path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("application/json")
        assert httpx.get(s.info.base_url + "/health").status_code == 200


def test_static_files_reference_only_their_own_server():
    """No CDN, no absolute URL, no inline script or style (the CSP would block them anyway)."""
    from importlib import resources

    static = resources.files("lib_mlx").joinpath("static")
    html = static.joinpath("index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith("/") and not ref.startswith("//"), ref
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and " style=" not in html
    for name in ("index.html", "app.js", "style.css"):
        text = static.joinpath(name).read_text()
        assert not re.search(r"https?://|wss?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name
        assert "localStorage" not in text and "sessionStorage" not in text and "document.cookie" not in text


def test_page_url_carries_the_token_in_the_fragment():
    assert page_url("http://127.0.0.1:8080", "abc") == "http://127.0.0.1:8080/#token=abc"
    assert page_url("http://127.0.0.1:8080", None) == "http://127.0.0.1:8080/"
    assert page_url("http://[::1]:80", "a&b#c d") == "http://[::1]:80/#token=a%26b%23c%20d"
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY
