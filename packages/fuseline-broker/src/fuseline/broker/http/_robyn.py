"""Everything that touches Robyn: building the app and running it on a socket.

Robyn parses ``sys.argv`` when it is imported and when an app is created
(its own ``--processes``, ``--log-level``, ``--dev``...), and would act on
our flags or print its help for ``-h``. It is therefore imported, and apps
created, with ``sys.argv`` reduced to the program name.

Robyn also offers a multi-process mode, but its processes do not stop on
SIGTERM in every mode; ``_serve`` runs the processes itself and only asks
Robyn to serve one process on an already bound socket.

Robyn wraps every handler in a function that works out, per request, which
of the request's parts the handler's signature asks for; it reads every
part to do so, form data and uploaded files included. Our handlers take the
request object and nothing else, so ``build_app`` registers each route and
then points it straight at the handler, leaving the wrapper out. Handlers
stay ``async``: Robyn calls a plain function on the web server's own thread,
and one that lets go of the GIL there (as every database call does) stalls
the server in Robyn 0.88.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fuseline.broker.http._config import ServerConfig
from fuseline.broker.http._openapi import DOCS_PAGE, openapi_json
from fuseline.broker.http._pipeline import Answer, Service
from fuseline.broker.http._routes import ROUTES, Endpoint
from fuseline.clients.wire import IDEMPOTENCY_HEADER

__all__ = ["bind", "build_app", "serve_on", "silence_robyn"]

_FALLBACK_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


@contextlib.contextmanager
def _plain_argv() -> Iterator[None]:
    saved = sys.argv
    sys.argv = saved[:1] or ["fuseline-broker"]
    try:
        yield
    finally:
        sys.argv = saved


@functools.cache
def _robyn() -> Any:
    with _plain_argv():
        import robyn

    return robyn


def silence_robyn(level: int) -> None:
    """Keep Robyn's and actix's start-up chatter out of the log unless debugging."""
    quiet = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    for name in ("robyn", "robyn.logger", "actix_server", "actix_web", "actix_http"):
        logging.getLogger(name).setLevel(quiet)


def _response(answer: Answer, content_type: str = "application/json") -> Any:
    robyn = _robyn()
    headers = {"Content-Type": content_type, "Cache-Control": "no-store", **answer.headers}
    return robyn.Response(status_code=answer.status, headers=headers, description=answer.body)


# The only request headers any route reads.
_READ_HEADERS = ("authorization", IDEMPOTENCY_HEADER.lower())


def _headers(request: Any) -> dict[str, str]:
    found = request.headers
    return {name: str(value) for name in _READ_HEADERS if (value := found.get(name)) is not None}


Handler = Callable[[Any], Awaitable[Any]]


def _route_handler(service: Service, endpoint: Endpoint) -> Handler:
    async def handle(request: Any) -> Any:
        answer = await service.handle(
            endpoint,
            headers=_headers(request),
            path_params=dict(request.path_params),
            query=request.query_params.to_dict(),
            body=request.body,
        )
        return _response(answer)

    handle.__name__ = f"fuseline_{endpoint.operation_id}"
    return handle


def _fallback_handler(service: Service, method: str) -> Handler:
    async def fallback(request: Any) -> Any:
        return _response(service.fallback(method, str(request.url.path)))

    fallback.__name__ = f"fuseline_fallback_{method.lower()}"
    return fallback


def _static_handler(body: bytes, content_type: str) -> Handler:
    async def static(request: Any) -> Any:
        return _response(Answer(200, body, {}), content_type)

    return static


def _add_route(app: Any, method: Any, path: str, handler: Handler) -> None:
    """Register ``handler`` for ``method`` and ``path``, called without Robyn's wrapper."""
    with _plain_argv():
        from robyn.robyn import FunctionInfo

    app.add_route(method, path, handler)
    routes = app.router.routes
    # Robyn appends exactly one route per call; swap in the bare handler,
    # called with the request as its only argument.
    routes[-1] = routes[-1]._replace(function=FunctionInfo(handler, True, 1, {"request": None}, {}))


def build_app(config: ServerConfig, service: Service) -> Any:
    """A Robyn app serving every route of the API through ``service``."""
    robyn = _robyn()
    with _plain_argv():
        app = robyn.Robyn(__file__)
    for endpoint in ROUTES:
        _add_route(app, endpoint.method, endpoint.robyn_path, _route_handler(service, endpoint))
    if config.docs:
        _add_route(
            app, "GET", "/openapi.json", _static_handler(openapi_json(config), "application/json")
        )
        _add_route(
            app, "GET", "/docs", _static_handler(DOCS_PAGE.encode(), "text/html; charset=utf-8")
        )
    # Anything no route serves still gets a JSON error: 405 when the path
    # exists with another method, 404 otherwise.
    with _plain_argv():
        from robyn.robyn import HttpMethod
    for method in _FALLBACK_METHODS:
        for path in ("/", "/*rest"):
            _add_route(app, getattr(HttpMethod, method), path, _fallback_handler(service, method))
    return app


def bind(host: str, port: int) -> Any:
    """Open the listening socket (shared by every server process)."""
    with _plain_argv():
        from robyn.robyn import SocketHeld

    return SocketHeld(host, port)


def serve_on(app: Any, socket: Any, workers: int = 1) -> None:
    """Serve ``app`` on ``socket`` in this process until the process ends."""
    with _plain_argv():
        from robyn.processpool import spawn_process

    spawn_process(
        directories=[],
        request_headers=app.request_headers,
        routes=app.router.get_routes(),
        global_middlewares=app.middleware_router.get_global_middlewares(),
        route_middlewares=app.middleware_router.get_route_middlewares(),
        web_sockets={},
        event_handlers={},
        socket=socket,
        workers=workers,
        response_headers=app.response_headers,
        excluded_response_headers_paths=None,
    )
