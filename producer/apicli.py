"""`svdq api` (serve the HTTP API and console) and `svdq token create|list|revoke`.

`svdq api` needs the `api` extra (FastAPI, uvicorn); it is imported only when the command
runs, and a missing one is named with the install line. `svdq token` needs only Redis.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from svdq.shared.errors import ConfigError, InvalidJobError
from svdq.shared.settings import Settings


def add_api(sub: Any) -> None:
    """`svdq api [--host H] [--port N]`."""
    api = sub.add_parser(
        "api",
        help="serve the HTTP API and web console (needs svdq[api]; TLS: a reverse proxy)",
    )
    api.add_argument("--host", default=None, help="listen address (default SVDQ_API_HOST)")
    api.add_argument("--port", type=int, default=None, help="port (default SVDQ_API_PORT)")
    api.set_defaults(handler=cmd_api)


def add_token(sub: Any) -> None:
    """`svdq token create NAME [--quota N] [--rate N] | list | revoke NAME`."""
    token = sub.add_parser("token", help="API tokens: create (printed once), list, revoke")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="make a token for NAME; it is printed once")
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--quota", type=int, default=None, help="queued jobs allowed (default SVDQ_API_MAX_QUEUED)"
    )
    create.add_argument(
        "--rate", type=int, default=None, help="requests a minute (default SVDQ_API_RATE_LIMIT)"
    )
    create.add_argument("--json", action="store_true", help="print the record as JSON")
    tlist = tsub.add_parser("list", help="every token's id, name and quota (never the token)")
    tlist.add_argument("--json", action="store_true", help="one JSON record per line")
    revoke = tsub.add_parser("revoke", help="remove a token by name or id: it stops at once")
    revoke.add_argument("name", metavar="NAME")
    token.set_defaults(handler=cmd_token)


def cmd_api(args: Any) -> int:
    """Serve until stopped."""
    try:
        import uvicorn

        from svdq.producer.api.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f"svdq api needs the api extra ({exc.name} is missing): pip install 'svdq[api]'"
        ) from None
    settings = Settings.from_env()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,  # the reverse proxy in front terminates TLS; trust no header
        server_header=False,
        # Past this many open connections and tasks uvicorn answers 503 at once, so no flood
        # of slow clients can take every file descriptor (SSE watchers count: keep it high).
        limit_concurrency=settings.api_max_connections,
    )
    return 0


def cmd_token(args: Any) -> int:
    """The token commands."""
    from svdq.producer.api.tokens import TokenStore
    from svdq.shared.celery_app import make_celery

    settings = Settings.from_env()
    # The producer's own Redis connection (Client's), whatever SVDQ_REDIS_URL names.
    tokens = TokenStore(make_celery(settings).backend.client)
    if args.token_command == "create":
        token, record = tokens.create(args.name, args.quota, args.rate)
        if args.json:
            print(json.dumps({**record, "token": token}))
        else:
            print(token)
            print(
                f"token {record['id']} for {record['name']}: shown once, only its hash is kept",
                file=sys.stderr,
            )
        return 0
    if args.token_command == "list":
        for t in tokens.all():
            if args.json:
                print(json.dumps(t))
            else:
                quota = t["quota"] if t["quota"] is not None else "default"
                rate = t["rate"] if t["rate"] is not None else "default"
                print(f"{t['id']}  {t['name']}  quota={quota}  rate={rate}/min")
        return 0
    gone = tokens.revoke(args.name)
    if not gone:
        raise InvalidJobError(f"NAME={args.name!r}: no token has that name or id", field="name")
    print(f"revoked {', '.join(gone)}", file=sys.stderr)
    return 0
