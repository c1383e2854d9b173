"""Container health checks, for images without curl (Docker HEALTHCHECK, compose, k8s exec).

    python /opt/rationalyst/healthcheck.py http 'http://127.0.0.1:${GATEWAY_PORT}/health'
    python /opt/rationalyst/healthcheck.py worker            # the worker process is alive
    python /opt/rationalyst/healthcheck.py worker --redis    # ... and its Redis answers PING

Exit status 0 = healthy, 1 = not. The URL may name environment variables
(``${GATEWAY_PORT}``), expanded here, so an exec-form HEALTHCHECK follows the service's port
setting. The worker serves no HTTP, so its check looks for its process in /proc (a zombie
counts as dead) and, with ``--redis``, pings the Redis that the worker's own settings name
(WORKER_REDIS_URL): the check and the worker can never disagree on where Redis is. Standard
library only, except ``--redis`` (redis-py and the worker's settings, both in the worker image).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

WORKER_MARKER = b"services.worker"


def check_http(url: str, timeout: float) -> str | None:
    """None when ``url`` (environment variables expanded) answers 2xx within ``timeout``, else
    why not."""
    url = os.path.expandvars(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url} unreachable: {exc}"
    return None if 200 <= status < 300 else f"{url} answered {status}"


def worker_processes(proc: Path = Path("/proc"), marker: bytes = WORKER_MARKER) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        if marker in cmdline.replace(b"\0", b" ") and state not in {"Z", "X"}:
            found.append(int(entry.name))
    return found


def check_redis(timeout: float) -> str | None:
    """None when the Redis of WORKER_REDIS_URL answers PING, else why not."""
    import redis

    from services.worker.settings import WorkerSettings

    url = WorkerSettings().redis_url
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"redis unreachable: {type(exc).__name__}"  # the URL may hold a password
    finally:
        client.close()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http", help="GET a URL; healthy on 2xx")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=4.0)
    worker = sub.add_parser("worker", help="the worker process runs (and Redis answers)")
    worker.add_argument("--redis", action="store_true", help="also PING the worker's Redis")
    worker.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)

    if args.kind == "http":
        problem = check_http(args.url, args.timeout)
    elif not worker_processes():
        problem = "no live worker process (python -m services.worker)"
    else:
        problem = check_redis(args.timeout) if args.redis else None
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
