"""Local processes of the ensemble: start model services and the gateway as subprocesses on
loopback, wait until each answers /ready, stop them cleanly.

Used by ``rationalyst up`` and by the integration tests' fixtures. Each child runs in its own
session (process group), so a Ctrl-C in the terminal reaches only the parent, which then stops
the children in order: SIGTERM to the child's group, a grace period, SIGKILL for what is left.
Stdlib and httpx only (no torch): importing it is cheap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ROLES: tuple[str, ...] = ("rationalyst", "agent", "scorer")
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8100,
    "rationalyst": 8101,
    "agent": 8102,
    "scorer": 8103,
}


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
) -> ServiceProcess:
    """Start ``command`` with stdout and stderr in ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
    return ServiceProcess(name, url, list(command), popen, log_path)


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
            if is_ready(p.url):
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
