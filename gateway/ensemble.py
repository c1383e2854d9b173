"""Local processes of the ensemble: start model services, the gateway, a worker and (when none
is reachable) a Redis as subprocesses on loopback, wait until each is ready, restart the ones
that may be restarted, stop them cleanly.

Used by ``rationalyst up`` and by the integration tests' fixtures. Each child runs in its own
session (process group), so a Ctrl-C in the terminal reaches only the parent, which then stops
the children in order: SIGTERM to the child's group, a grace period, SIGKILL for what is left.
Stdlib, httpx and redis-py only (no torch): importing it is cheap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ROLES: tuple[str, ...] = ("rationalyst", "agent", "scorer")
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8100,
    "rationalyst": 8101,
    "agent": 8102,
    "scorer": 8103,
    "reward": 8104,
}
REWARD_ROLE = "reward"
"""The optional fourth model service (``up --reward-model``): a PRM/ORM on transformers."""


THREADS_VAR = "MODEL_SERVER_THREADS"
"""Set by the user, it overrides the launcher's thread budget for every model service."""

# Libraries that size their own thread pools from these at import time. The model service
# sets torch's pools from MODEL_SERVER_THREADS; these keep OpenMP/MKL/OpenBLAS code outside
# torch (and torch's own first pool, created before the service runs) inside the same budget.
_POOL_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

ROLE_WEIGHTS: dict[str, int] = {"agent": 2}
"""Shares of the cores per role (1 when not listed). The agent decodes n candidates for every
request while the rationalyst decodes one row and the scorer runs one forward, so it is busy
most of each step (measured on the embedded model: propose 4.7 s, rationale 1.7 s in
parallel with it, score 0.5 s after) and gets twice the share."""


class EnsembleError(RuntimeError):
    """A process exited or did not become ready in time; the message holds its log tail."""


@dataclass
class ServiceProcess:
    """One child process and where it serves."""

    name: str
    url: str
    command: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    """The variables it was started with on top of the parent's (to restart it the same)."""
    ready: Callable[[], bool] | None = None
    """Its readiness check; None: ``GET {url}/ready`` answers 200."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def available_cores() -> list[int]:
    """The CPU ids this process may run on (its affinity mask, which a container's cpuset
    or ``taskset`` narrows), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def thread_budget(services: int, cores: int, weight: int = 1) -> int:
    """Threads of one model service when ``services`` of them share ``cores`` CPUs: an equal
    share, at least one, times ``weight``, at most every core. Several torch processes that
    each take every core thrash (their threads wait on each other's); shares keep the cores
    busy without that, and a busier role may take more than its share because the others are
    idle for much of the time."""
    if services < 1 or cores < 1 or weight < 1:
        raise ValueError("services, cores and weight must be >= 1")
    return min(cores, max(1, cores // services) * weight)


def parse_threads(value: str | None) -> int | None:
    """MODEL_SERVER_THREADS as the user set it: None when unset or empty, else a positive
    integer; anything else is a ValueError that names the variable."""
    if value is None or not value.strip():
        return None
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_VAR} must be a positive integer, got {value!r}") from None
    if threads < 1:
        raise ValueError(f"{THREADS_VAR} must be >= 1, got {threads}")
    return threads


def thread_envs(
    names: Sequence[str],
    *,
    cores: Sequence[int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    """The thread settings of each co-located model service, by name (a role name:
    :data:`ROLE_WEIGHTS` applies).

    Each gets ``MODEL_SERVER_THREADS`` (the user's value where set, else
    :func:`thread_budget` over ``cores``), the OpenMP/MKL/OpenBLAS pool sizes to match,
    ``OMP_WAIT_POLICY=PASSIVE`` (an idle OpenMP thread sleeps instead of spinning on a core
    another service needs), ``TOKENIZERS_PARALLELISM=false`` (the fast tokenizer's own pool
    would compete too) and, for the vLLM CPU engine, ``VLLM_CPU_OMP_THREADS_BIND``: a run of
    cores of its own where there are enough, so that the services' OpenMP threads are pinned
    apart. Values the user already set in ``environ`` win.
    """
    environ = os.environ if environ is None else environ
    cores = list(cores) if cores is not None else available_cores()
    given = parse_threads(environ.get(THREADS_VAR))
    out: dict[str, dict[str, str]] = {}
    first = 0
    for name in names:
        threads = given or thread_budget(len(names), len(cores), ROLE_WEIGHTS.get(name, 1))
        env = dict.fromkeys(_POOL_VARS, str(threads))
        env[THREADS_VAR] = str(threads)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        env["TOKENIZERS_PARALLELISM"] = "false"
        own = [cores[(first + k) % len(cores)] for k in range(threads)]
        first += threads
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in sorted(set(own)))
        out[name] = {k: environ.get(k) or v for k, v in env.items()}
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def model_service_command(
    role: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    model: str | None = None,
    engine: str | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "services.model_server", "--role", role]
    cmd += ["--host", host, "--port", str(port)]
    if model:
        cmd += ["--model", model]
    if engine:
        cmd += ["--engine", engine]
    return cmd


def gateway_command(port: int, urls: Mapping[str, str], *, host: str = "127.0.0.1") -> list[str]:
    cmd = [sys.executable, "-m", "gateway", "--host", host, "--port", str(port)]
    for role in ROLES:
        cmd += [f"--{role}-url", urls[role]]
    if REWARD_ROLE in urls:
        cmd += ["--reward-url", urls[REWARD_ROLE]]
    return cmd


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment, the project root on PYTHONPATH, and ``extra``."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.update(extra or {})
    return env


def start_process(
    name: str,
    command: Sequence[str],
    url: str,
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    ready: Callable[[], bool] | None = None,
    append_log: bool = False,
) -> ServiceProcess:
    """Start ``command`` with stdout and stderr in ``log_dir/<name>.log`` (appended to when
    ``append_log``: a restart keeps the log of the run that died)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab" if append_log else "wb") as log:
        popen = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
    return ServiceProcess(name, url, list(command), popen, log_path, dict(env or {}), ready)


def restart_process(p: ServiceProcess) -> ServiceProcess:
    """Start ``p``'s command again, with the same environment, appending to its log."""
    return start_process(
        p.name, p.command, p.url, log_dir=p.log_path.parent, env=p.env, ready=p.ready,
        append_log=True,
    )  # fmt: skip


def is_ready(url: str, *, timeout_s: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/ready", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(
    procs: Sequence[ServiceProcess],
    *,
    timeout_s: float = 600.0,
    poll_s: float = 0.5,
    on_poll: Callable[[dict[str, str]], None] | None = None,
) -> None:
    """Block until every process answers /ready with 200.

    ``on_poll`` gets ``{name: "starting" | "ready"}`` after each round (progress display).
    Raises :class:`EnsembleError` as soon as a process exits, or at the timeout.
    """
    status = dict.fromkeys((p.name for p in procs), "starting")
    deadline = time.monotonic() + timeout_s
    while True:
        for p in procs:
            if status[p.name] == "ready":
                continue
            if not p.alive():
                raise EnsembleError(
                    f"{p.name} exited with code {p.popen.returncode} before it was ready "
                    f"(log {p.log_path}):\n{p.log_tail()}"
                )
            if p.ready() if p.ready is not None else is_ready(p.url):
                status[p.name] = "ready"
        if on_poll is not None:
            on_poll(dict(status))
        if all(s == "ready" for s in status.values()):
            return
        if time.monotonic() > deadline:
            waiting = [n for n, s in status.items() if s != "ready"]
            tails = "\n".join(
                f"--- {p.name}:\n{p.log_tail(15)}" for p in procs if p.name in waiting
            )
            raise EnsembleError(f"not ready after {timeout_s:g}s: {', '.join(waiting)}\n{tails}")
        time.sleep(poll_s)


def start_ensemble(
    procs: list[ServiceProcess],
    *,
    log_dir: Path,
    model: str | None = None,
    threads: int | None = None,
    timeout_s: float = 1800.0,
    urls: Mapping[str, str | None] | None = None,
    gateway_env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 900.0,
) -> tuple[str, dict[str, str]]:
    """Start the model services of :data:`ROLES` that ``urls`` does not give and a gateway on
    all of them, and wait until every one is ready: the gateway's URL and the services'.

    Each process goes into ``procs`` as it starts, so the caller stops them (also when this
    raises). The services share the cores by the launcher's budget (``threads`` for each
    instead, when given), and calls may take ``timeout_s`` in the services and the gateway, so
    that on a loaded machine nothing times out before the client does. For scripts that
    measure the ensemble (``bench/``); ``rationalyst up`` supervises its own."""
    given = {THREADS_VAR: str(threads)} if threads else {}
    budget = thread_envs(ROLES, environ=given)
    service_urls: dict[str, str] = {}
    for role in ROLES:
        url = (urls or {}).get(role)
        if url:
            service_urls[role] = url
            continue
        port = free_port()
        service_urls[role] = f"http://127.0.0.1:{port}"
        env = {"MODEL_SERVER_REQUEST_TIMEOUT_S": str(timeout_s), **budget[role]}
        cmd = model_service_command(role, port, model=model)
        procs.append(start_process(role, cmd, service_urls[role], log_dir=log_dir, env=env))
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    env = {"GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_UPSTREAM_TIMEOUT_S": str(timeout_s)}
    env.update(gateway_env or {})
    cmd = gateway_command(port, service_urls)
    procs.append(start_process("gateway", cmd, gateway_url, log_dir=log_dir, env=env))
    print(f"waiting for services (logs in {log_dir}) ...", file=sys.stderr)
    wait_ready(procs, timeout_s=ready_timeout_s)
    return gateway_url, service_urls


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, ``timeout``) into SystemExit, so that a script's ``finally``
    stops the processes it started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _signal_group(p: ServiceProcess, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)  # the child leads its own group (start_new_session)


def stop_processes(procs: Iterable[ServiceProcess], *, timeout_s: float = 10.0) -> None:
    """SIGTERM each live process group, wait up to ``timeout_s``, then SIGKILL what is left."""
    procs = list(procs)
    for p in procs:
        if p.alive():
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.alive():
            _signal_group(p, signal.SIGKILL)
            p.popen.wait()


# --------------------------------------------------------------------------------------------
# The job queue: Redis and a worker

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Where the gateway and the worker look for Redis unless told otherwise."""
REDIS_URL_VARS = ("WORKER_REDIS_URL", "GATEWAY_REDIS_URL")
WORKER_THREADS = 1
"""Threads of the worker's own torch and BLAS pools: it mostly waits on HTTP; only the
prefilter's embedding model computes in the worker (training runs in a child process that
gets its own threads, ``WORKER_TRAIN_THREADS``)."""


def redis_ping(url: str, *, timeout_s: float = 1.0) -> bool:
    """Whether a Redis answers PING at ``url``."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def configured_redis_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The Redis URL the user set (``WORKER_REDIS_URL``, else ``GATEWAY_REDIS_URL``)."""
    environ = os.environ if environ is None else environ
    for var in REDIS_URL_VARS:
        if environ.get(var, "").strip():
            return environ[var].strip()
    return None


def find_redis_server() -> str | None:
    return shutil.which("redis-server")


REDIS_MISSING = (
    "no Redis is reachable at {url} and redis-server is not installed, so `up` cannot start "
    "one for the job queue. Install it (scripts/bootstrap.sh does where it can; else "
    "`apt-get install redis-server` or `brew install redis`), point WORKER_REDIS_URL at a "
    "running Redis, or start without jobs: `rationalyst up --no-worker`."
)


def redis_server_command(
    port: int, data_dir: Path, *, host: str = "127.0.0.1", binary: str = "redis-server"
) -> list[str]:
    """A redis-server that keeps the job state in an append-only file under ``data_dir``,
    written before each reply (``appendfsync always``: a Redis killed at any moment loses no
    job state, and at the job queue's rate of writes the cost is nothing)."""
    return [
        binary, "--port", str(port), "--bind", host, "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        "--protected-mode", "no",
    ]  # fmt: skip


def worker_command() -> list[str]:
    return [sys.executable, "-m", "services.worker"]


def worker_ready(redis_url: str, queue_name: str = "rationalyst:queue") -> Callable[[], bool]:
    """A worker is ready once it polls the queue: arq then writes its health-check key (and
    deletes it when the worker stops)."""

    def check() -> bool:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.exists(f"{queue_name}:health-check"))
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    return check


def worker_env(
    *,
    redis_url: str,
    artifacts_dir: Path,
    agent_url: str,
    scorer_url: str,
    train_threads: int,
    internal_token: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The worker's variables under ``up``: the ensemble's Redis, artifacts root and model
    services; one thread for its own pools (:data:`WORKER_THREADS`), all the cores for a
    training run. Values the user set win, except the URLs ``up`` wires itself."""
    environ = os.environ if environ is None else environ
    env = dict.fromkeys(_POOL_VARS, str(WORKER_THREADS))
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["WORKER_TRAIN_THREADS"] = str(train_threads)
    env = {k: environ.get(k) or v for k, v in env.items()}
    env.update(
        WORKER_REDIS_URL=redis_url,
        WORKER_ARTIFACTS_DIR=str(artifacts_dir),
        WORKER_AGENT_URL=agent_url,
        WORKER_SCORER_URL=scorer_url,
    )
    if internal_token:
        env["WORKER_INTERNAL_TOKEN"] = internal_token
    return env


@dataclass
class RestartPolicy:
    """When to start a restartable process again: at once the first time, then after a delay
    that doubles with each further death within ``window_s`` (up to ``max_delay_s``)."""

    window_s: float = 60.0
    max_delay_s: float = 30.0
    deaths: dict[str, list[float]] = field(default_factory=dict)

    def delay(self, name: str, now: float | None = None) -> float:
        """Record a death of ``name``; the seconds to wait before restarting it."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self.deaths.get(name, []) if now - t < self.window_s]
        recent.append(now)
        self.deaths[name] = recent
        return 0.0 if len(recent) == 1 else min(self.max_delay_s, 2.0 ** (len(recent) - 2))


class JobQueue:
    """The Redis of the ensemble's job queue, and the artifacts root the gateway and the
    worker share.

    Which Redis: the one given (``--redis-url``, else ``WORKER_REDIS_URL`` or
    ``GATEWAY_REDIS_URL``), which must answer; else the default URL when a Redis answers
    there; else a ``redis-server`` child on a free port whose append-only file lives under
    ``<artifacts>/_redis`` (so a restart of it, by ``up`` or by hand, keeps every job).
    """

    def __init__(
        self,
        url: str,
        artifacts_dir: Path,
        *,
        origin: str,
        server_command: list[str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.artifacts_dir = artifacts_dir
        self.origin = origin
        self.server_command = server_command
        self.data_dir = data_dir

    @classmethod
    def choose(
        cls, host: str, redis_url: str | None, start: bool, artifacts_dir: Path | None
    ) -> JobQueue:
        from shared.settings import default_cache_dir

        root = artifacts_dir or next(
            (Path(os.environ[v]) for v in ("WORKER_ARTIFACTS_DIR", "GATEWAY_ARTIFACTS_DIR")
             if os.environ.get(v, "").strip()),
            default_cache_dir() / "artifacts",
        )  # fmt: skip
        root = root.expanduser().resolve()
        given = redis_url or configured_redis_url()
        if not start and given:
            if not redis_ping(given):
                raise EnsembleError(
                    f"the configured Redis ({_redacted(given)}) is not reachable: start it, "
                    "or unset WORKER_REDIS_URL and --redis-url to let `up` start one"
                )
            return cls(given, root, origin="configured")
        if not start and redis_ping(DEFAULT_REDIS_URL):
            return cls(DEFAULT_REDIS_URL, root, origin="found on the default URL")
        binary = find_redis_server()
        if binary is None:
            raise EnsembleError(REDIS_MISSING.format(url=DEFAULT_REDIS_URL))
        data_dir = root / "_redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port(host)
        command = redis_server_command(port, data_dir, host=host, binary=binary)
        return cls(
            f"redis://{host}:{port}/0",
            root,
            origin="started by up",
            server_command=command,
            data_dir=data_dir,
        )

    def describe(self) -> str:
        where = f" (append-only file in {self.data_dir})" if self.data_dir else ""
        return f"{_redacted(self.url)}  {self.origin}{where}"

    def gateway_env(self) -> dict[str, str]:
        return {
            "GATEWAY_REDIS_URL": self.url,
            "GATEWAY_ARTIFACTS_DIR": str(self.artifacts_dir),
            **{k.replace("WORKER_", "GATEWAY_"): v for k, v in self.data_dirs_env().items()},
        }

    @staticmethod
    def data_dirs_env() -> dict[str, str]:
        """``WORKER_DATA_DIRS`` for the worker when either service's variable is set (the
        gateway checks inputs against the same roots the worker reads)."""
        value = os.environ.get("WORKER_DATA_DIRS") or os.environ.get("GATEWAY_DATA_DIRS")
        return {"WORKER_DATA_DIRS": value} if value else {}

    def start_server(self, log_dir: Path) -> ServiceProcess:
        assert self.server_command is not None
        url = self.url
        return start_process(
            "redis", self.server_command, url, log_dir=log_dir, ready=lambda: redis_ping(url)
        )

    def wait_server(self, proc: ServiceProcess, timeout_s: float = 20.0) -> None:
        """Block until the started Redis answers (the others connect to it at start-up)."""
        deadline = time.monotonic() + timeout_s
        while not redis_ping(self.url):
            if not proc.alive() or time.monotonic() > deadline:
                raise EnsembleError(f"redis-server did not start:\n{proc.log_tail()}")
            time.sleep(0.1)

    def jobs_kept(self) -> int | None:
        """Jobs the Redis knows (after a restart: those its append-only file brought back)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            count: Any = client.zcard("rationalyst:jobs")
            return int(count)
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()


def _redacted(url: str) -> str:
    from shared.jobs_store import redacted_url

    return redacted_url(url)


def supervise(
    procs: list[ServiceProcess],
    restartable: set[str],
    queue: JobQueue | None,
    console: Any,
    restart: Callable[[ServiceProcess], ServiceProcess],
    *,
    poll_s: float = 0.5,
) -> ServiceProcess:
    """Watch the processes until one that may not be restarted exits (returned). The Redis
    ``up`` started and the worker are restarted when they exit, at once the first time, then
    with a growing delay; meanwhile the gateway's job API answers 503 naming Redis. ``console``
    is a rich Console (``print(text, markup=..., style=...)``)."""
    policy = RestartPolicy()
    while True:
        for i, p in enumerate(procs):
            if p.alive():
                continue
            if p.name not in restartable:
                return p
            wait = policy.delay(p.name)
            note = ""
            if p.name == "redis":
                note = (
                    "; until it is back the job API answers 503 (Redis unreachable); job "
                    "state is kept in its append-only file"
                )
            after = f" in {wait:.0f}s" if wait else ""
            console.print(
                f"{p.name} exited with code {p.popen.returncode}; restarting it{after}{note}",
                markup=False,
                style="yellow",
            )
            time.sleep(wait)
            procs[i] = restart(p)
            if p.name == "redis" and queue is not None:
                try:
                    queue.wait_server(procs[i])
                except Exception as exc:  # it died again: the next round restarts it
                    console.print(str(exc), markup=False, style="red")
                    continue
                kept = queue.jobs_kept()
                console.print(
                    f"redis is back at {_redacted(queue.url)}"
                    + (f" with {kept} job(s)" if kept is not None else ""),
                    markup=False,
                    style="green",
                )
        time.sleep(poll_s)
