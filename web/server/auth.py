"""Who may talk to the server: bearer tokens from files, Host and Origin checks.

Two token files, one for ingest (the agents) and one for reads (the UI, curl, Prometheus), so an
agent's token cannot read profiles and a reader's cannot write them. A file holds one token per line
(several for rotation: add the new one, roll the clients, drop the old one); blank lines and `#`
comments are skipped. The file is stat'ed on every request and re-read when it changed, so a
Kubernetes Secret mounted as files (updated by an atomic symlink swap) rotates without a restart.
Tokens are compared with `hmac.compare_digest` against every entry, without an early exit.

Browsers are held to more: any state-changing request that carries an `Origin` or `Sec-Fetch-Site`
header must come from this server's own origin (or one listed in ALLOWED_ORIGINS), and a browser's
ingest must use a non-simple content type, so a cross-origin form or no-cors `fetch` stores nothing.
The Host header must be in ALLOWED_HOSTS when that is set (the CLI sets the loopback names when it
listens on loopback): a DNS-rebound name cannot reach a token-less local server. The agent and curl
send no Origin and are not affected.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, request

from podflame.errors import Forbidden, InvalidInput, NotFound, Unauthorized

log = logging.getLogger("podflame.web.auth")

MIN_TOKEN_LENGTH = 16
READ_COOKIE = "podflame_read"
INGEST_PATH = "/api/v1/ingest"
SESSION_PATH = "/api/v1/session"
# Answer without a token: probes, the API's description, the page and its static files (they hold no
# profile data; the page asks for a token when the API answers 401), and the login that sets the cookie.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/api/v1/openapi.json", "/", SESSION_PATH})
PUBLIC_PREFIXES = ("/ui/static/",)
PROBE_PATHS = frozenset({"/healthz", "/readyz"})  # kubelet probes use the pod IP as Host
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a browser may send cross-origin without a CORS preflight (the Fetch standard's CORS-safelisted types)
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class TokenFileError(InvalidInput):
    """A token file that cannot be used at start: missing, unreadable, empty or holding a weak token."""


class TokenFile:
    """The tokens of one file, re-read when the file's identity, size or mtime changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        self._tokens: tuple[bytes, ...] = ()
        try:
            self._reload(strict=True)
        except OSError as e:
            raise TokenFileError(f"cannot read token file {self.path}: {e.strerror or e}") from None

    def _stat(self) -> tuple[int, ...]:
        st = self.path.stat()  # follows the Secret volume's ..data symlink: a swap changes the inode
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _reload(self, strict: bool) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        tokens = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            if len(token) < MIN_TOKEN_LENGTH:
                message = f"{self.path}:{n}: token shorter than {MIN_TOKEN_LENGTH} characters"
                if strict:
                    raise TokenFileError(message + " (generate one with `openssl rand -hex 32`)")
                log.error("%s: ignored", message)
                continue
            tokens.append(token.encode())
        if strict and not tokens:
            raise TokenFileError(f"token file {self.path} holds no token (one per line)")
        if not tokens:
            log.error("token file %s holds no token now: every request is refused until it does", self.path)
        self._tokens, self._signature = tuple(tokens), signature
        if not strict:
            log.info("token file %s changed: %d token(s) loaded", self.path, len(tokens))

    def tokens(self) -> tuple[bytes, ...]:
        with self._lock:
            try:
                self._reload(strict=False)
            except (OSError, UnicodeDecodeError) as e:  # mid-swap or removed: keep the last good set
                log.warning("cannot re-read token file %s (%s): keeping the previous tokens", self.path, e)
            return self._tokens

    def accepts(self, token: str | None) -> bool:
        if not token:
            return False
        given = token.encode()
        ok = False
        for known in self.tokens():  # no early exit: the time does not say which entry matched
            ok |= hmac.compare_digest(known, given)
        return ok


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, config: dict[str, object], insecure: bool) -> None:
    """Refuse to listen beyond loopback without both tokens, unless the operator said --insecure."""
    if is_loopback(host) or insecure:
        return
    options = (("INGEST_TOKEN_FILE", "--ingest-token-file"), ("READ_TOKEN_FILE", "--read-token-file"))
    missing = [opt for key, opt in options if not config.get(key)]
    if missing:
        raise InvalidInput(
            f"refusing to listen on {host} without access control: anyone who can reach it could push and read "
            f"every profile. Give {' and '.join(missing)} (files with one token per line, e.g. a mounted "
            "Kubernetes Secret), listen on 127.0.0.1, or pass --insecure if a network policy already "
            "restricts who can connect.")


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:7070
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _check_host(allowed: Iterable[str] | None) -> None:
    if allowed is None:
        return
    names = {a.lower().strip("[]") for a in allowed}
    if "*" in names:
        return
    name = _host_name(request.host)
    if name not in names:
        raise Forbidden(f"Host {name!r} is not served here (allowed: {', '.join(sorted(names))}; "
                        "--allowed-hosts adds names)")


def _check_origin(extra: Iterable[str]) -> None:
    """State-changing requests from a browser must come from this origin."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if origin is not None:
        own = f"{request.scheme}://{request.host}".lower()
        allowed = {own, *(o.rstrip("/").lower() for o in extra)}
        if origin.rstrip("/").lower() not in allowed:
            raise Forbidden(f"cross-origin request from {origin!r} refused: only {own} may change data")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
    if origin is None and site is None:
        return  # not a browser (the agent, curl): tokens decide
    if request.path == INGEST_PATH:
        mimetype = request.mimetype or ""
        if not mimetype or mimetype in SIMPLE_CONTENT_TYPES:
            raise Forbidden("a browser's ingest must send Content-Type: application/octet-stream "
                            "(simple content types can be sent by any web page)")


def required_tokens(path: str) -> str | None:
    """The config key of the token file a path needs, or None for public paths."""
    if path == INGEST_PATH:
        return "INGEST_TOKEN_FILE"
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    if path == "/metrics" and current_app.config.get("METRICS_PUBLIC"):
        return None
    return "READ_TOKEN_FILE"


def token_file(key: str) -> TokenFile | None:
    files: dict[str, TokenFile] = current_app.extensions["podflame.tokens"]
    return files.get(key)


def check_request() -> None:
    """Flask before_request: Host, Origin, then the token the path needs."""
    if request.path in PROBE_PATHS:
        return
    config = current_app.config
    _check_host(config.get("ALLOWED_HOSTS"))
    if request.method not in SAFE_METHODS:
        _check_origin(config.get("ALLOWED_ORIGINS") or ())
    key = required_tokens(request.path)
    tokens = token_file(key) if key else None
    if tokens is None:
        return
    given = _bearer()
    if given is None and key == "READ_TOKEN_FILE":
        given = request.cookies.get(READ_COOKIE)
    if not tokens.accepts(given):
        what = "an ingest" if key == "INGEST_TOKEN_FILE" else "a read"
        raise Unauthorized(f"{what} token is required: send `Authorization: Bearer TOKEN`"
                           if given is None else f"{what} token was given but is not valid")


def _www_authenticate(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="podflame"'
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")  # profiles and tokens stay out of caches
    return response


def install(app: Flask) -> None:
    """Load the token files named in the config (failing at start if unusable) and add the checks."""
    app.extensions["podflame.tokens"] = {key: TokenFile(app.config[key])
                                         for key in ("INGEST_TOKEN_FILE", "READ_TOKEN_FILE") if app.config.get(key)}
    app.before_request(check_request)
    app.after_request(_www_authenticate)


def allowed_hosts_for(host: str, extra: str | None) -> list[str] | None:
    """ALLOWED_HOSTS for a listen address: the loopback names on loopback (DNS rebinding), any otherwise
    (tokens guard a reachable server), plus --allowed-hosts; `*` allows any."""
    names = [h.strip() for h in (extra or "").split(",") if h.strip()]
    if is_loopback(host):
        return [*LOOPBACK_HOSTS, host, *names]
    return names or None


session = Blueprint("session", __name__)


@session.post(SESSION_PATH)
def login() -> Response:
    """The page's login: `{"token": READ_TOKEN}` -> 204 with the read cookie (HttpOnly, SameSite=Strict),
    so the page's fetches and its download links carry it. 401 for a wrong token; 404 without read tokens."""
    tokens = token_file("READ_TOKEN_FILE")
    if tokens is None:
        raise NotFound("this server has no read tokens: nothing to log in to")
    body = request.get_json(force=True, silent=True)  # curl -d sends it form-typed
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise InvalidInput('send the read token as JSON: {"token": "READ_TOKEN"}')
    if not tokens.accepts(token):
        raise Unauthorized("that read token is not valid")
    response = Response(status=204)
    response.set_cookie(READ_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/")
    return response


@session.delete(SESSION_PATH)
def logout() -> Response:
    response = Response(status=204)
    response.delete_cookie(READ_COOKIE, path="/", httponly=True, samesite="Strict")
    return response
