"""Keeps tritonserver serving: the HTTP front, restarts after a crash, and self-healing models.

One asyncio loop runs
  * the front (bertqa.front) on the public HTTP address; tritonserver's own HTTP port is on loopback,
  * tritonserver itself, restarted (and the event logged) whenever it exits without being asked to,
  * a canary (bertqa.canary) through every public question-answering ensemble every few seconds.
    A failure marks the ensemble not ready (the front then answers 503) and the supervisor reloads the
    broken step through Triton's model-control API (explicit mode, with the admin key), or all steps
    when the error does not name one; if that does not bring the canary back, tritonserver is restarted.
    Triton itself does neither: a killed Python-backend stub is never replaced and readiness stays 200.

Used in-process by ``bertqa serve`` (bertqa.server.EmbeddedServer) and, in the Triton image, as
``python3 -m bertqa.supervisor [options] -- tritonserver ARGS`` (docker/triton/entrypoint.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import aiohttp
import psutil
from aiohttp import web

from bertqa.canary import probe
from bertqa.front import _STUB_UNHEALTHY, Front, FrontConfig, ServingState

log = logging.getLogger("bertqa.supervisor")


@dataclass(frozen=True)
class HealthConfig:
    canary_interval_s: float = 2.0
    canary_timeout_s: float = 5.0
    startup_timeout_s: float = 180.0
    exit_timeout_s: float = 30.0
    # Reloads tried before restarting tritonserver as the last resort.
    reload_attempts: int = 2


class TritonExited(RuntimeError):
    pass


class Supervisor:
    def __init__(self, command: list[str], *, triton_http: str, listen_host: str, listen_port: int,
                 admin_key: str, env: dict[str, str] | None = None, output=None,
                 front: FrontConfig = FrontConfig(), health: HealthConfig = HealthConfig()):
        self.command, self.env, self.output = command, env, output
        self.triton_http = f"http://{triton_http}"
        self.listen = (listen_host, listen_port)
        self.admin = {"admin-key": admin_key}
        self.front_config, self.health = front, health
        self.process: subprocess.Popen | None = None
        self.state: ServingState | None = None
        self.ready = threading.Event()  # set once the first start is fully ready
        self.failure: str | None = None  # why the first start failed
        self.restarts = 0
        self.recoveries: list[tuple[str, float]] = []  # (model, seconds from detection to healthy)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._steps: dict[str, list[str]] = {}  # ensemble -> its step models
        self._canary_models: set[str] = set()
        self._broken_since: dict[str, float] = {}
        # (succeeded, failed) per canary model after its last check: requests that succeeded since then,
        # with none failing, prove the model healthy without a canary (no probe competes with real load).
        self._checked_counts: dict[str, tuple[int, int] | None] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Thread- and signal-safe: stop tritonserver gracefully, then the front."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                self._loop.call_soon_threadsafe(self._stop.set)

    def run(self) -> int:
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        self._loop, self._stop, self.state = asyncio.get_running_loop(), asyncio.Event(), ServingState()
        runner = web.AppRunner(Front(self.triton_http, self.state, self.front_config).app(), access_log=None)
        await runner.setup()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.health.startup_timeout_s))
        try:
            await web.TCPSite(runner, *self.listen).start()
            return await self._supervise()
        except OSError as err:  # the public port
            self.failure = f"cannot listen on {self.listen[0]}:{self.listen[1]}: {err.strerror or err}"
            return 1
        finally:
            # Connections first: tritonserver waits for open keep-alive connections before it exits.
            await runner.cleanup()
            await self._session.close()
            await self._terminate()

    async def _supervise(self) -> int:
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            self._spawn()
            try:
                await self._wait_ready()
            except TritonExited as err:
                if not self.ready.is_set():
                    self.failure = str(err)
                    return 1
                log.error("%s; restarting in %.0f s", err, backoff)
            else:
                await self._discover()
                self.state.triton_up = True
                self.ready.set()
                await self._watch()
            self.state.triton_up = False
            if self._stop.is_set():
                break
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            await self._sleep(backoff)
            self.restarts += 1
        return 0

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=self.output, stderr=subprocess.STDOUT if self.output else None,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor, which stops it once
        )
        log.info("tritonserver started (pid %d)", self.process.pid)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.health.startup_timeout_s
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise TritonExited("stopped while starting")
            if self.process.poll() is not None:
                raise TritonExited(f"tritonserver exited with code {self.process.returncode}")
            if await self._get_status("/v2/health/ready") == 200:
                return
            await self._sleep(0.25)
        await self._kill()
        raise TritonExited(f"tritonserver not ready after {self.health.startup_timeout_s:.0f} s")

    async def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), self.health.exit_timeout_s)
        except asyncio.TimeoutError:
            await self._kill()

    async def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- watching and healing -----------------------------------------------------------------

    async def _watch(self) -> None:
        """Returns when tritonserver exits or a stop is requested; runs the canary meanwhile."""
        failures: dict[str, int] = {}
        reloads: dict[str, int] = {}
        due: list[str] = []  # this round's models not yet checked
        next_slot = 0.0
        while not self._stop.is_set():
            if self.process.poll() is not None:
                self.state.not_ready_reason = f"tritonserver exited with code {self.process.returncode}; restarting"
                log.error("tritonserver exited with code %s; restarting it", self.process.returncode)
                return
            if self.state.check_now.is_set():
                # A failure was seen: check what it named (everything when it named nothing) at once.
                self.state.check_now.clear()
                targets = self._canary_targets()
                await self._check([m for m in targets if m in self.state.broken] or targets, failures, reloads)
            elif time.monotonic() >= next_slot:
                # One model per slot, the slots spread over the interval: each model is still checked once
                # per interval, but probes of idle models never arrive together on a busy one's cores
                # (all at once, 4 idle ensembles raised a busy model's p99 at 26/s from 85 to 127 ms).
                targets = self._canary_targets()
                due = [m for m in due if m in targets] or targets
                if due:
                    await self._check(due[:1], failures, reloads)
                    due = due[1:]
                next_slot = time.monotonic() + self.health.canary_interval_s / max(1, len(targets))
            await self._sleep(0.2)

    def _canary_targets(self) -> list[str]:
        return [m for m in self.state.public if m in self._canary_models]

    async def _check(self, candidates: list[str], failures: dict[str, int], reloads: dict[str, int]) -> None:
        models, before = [], []
        for model, counts in zip(candidates, await asyncio.gather(*(self._counts(m) for m in candidates))):
            last = self._checked_counts.get(model)
            self._checked_counts[model] = counts
            if (counts and last and model not in self.state.broken and counts[0] > last[0] and counts[1] == last[1]):
                failures[model] = reloads[model] = 0  # real requests succeeded since the last check: no probe
                continue
            models.append(model)
            before.append(sum(counts) if counts else None)
        # Lenient: any well-formed answer will do (a model may rightly find no span in the canary text).
        results = await asyncio.gather(*(asyncio.to_thread(probe, self.triton_http, m, self.health.canary_timeout_s,
                                                           require_answer=False) for m in models))
        for model, executed, result in zip(models, before, results):
            rejected = result.status is not None and 400 <= result.status < 500
            if result.ok:
                failures[model] = reloads[model] = 0
                self._mark_healthy(model)
            elif result.status == 404 and model not in self.state.broken:
                await self._discover()  # unloaded by an operator (admin API): follow, do not fight
                return
            elif rejected and model not in self.state.broken:
                log.warning("%s rejected the canary (not a server failure): %s", model, result.reason)
            elif result.status is None and executed is not None and await self._completions(model) != executed:
                log.info("%s: canary timed out while other requests completed (busy, not wedged)", model)
            else:
                failures[model] = failures.get(model, 0) + 1
                await self._judge(model, result.reason, result.status is None, failures[model], reloads)
        for model, counts in zip(models, await asyncio.gather(*(self._counts(m) for m in models))):
            self._checked_counts[model] = counts  # the canary's own request is not evidence next time

    async def _judge(self, model: str, reason: str, timed_out: bool, failures: int, reloads: dict[str, int]) -> None:
        """Heals when the failure is the server's: a stub that is dead (Triton names it) or stopped
        (its process state says so), or a server error that repeats."""
        stuck = stuck_stubs(self.process.pid, self._steps.get(model, []))
        for process in stuck.values():  # a stopped stub holds its requests, and its unload, forever
            with contextlib.suppress(psutil.Error):
                process.kill()
        dead = _STUB_UNHEALTHY.search(reason)  # Triton names a dead instance, e.g. qa_preprocess_0_0
        names = sorted(set(stuck) | ({dead["instance"].rsplit("_", 2)[0]} if dead else set()))
        if names:
            await self._heal(model, reason + (f" (stopped stub: {', '.join(sorted(stuck))})" if stuck else ""),
                             names, reloads)
        elif timed_out:
            # No error, no stopped process, nothing finished: one very long request looks the same
            # (a 64-pair batch of long contexts on a busy CPU), and reloading would fail it. Load, then.
            (log.warning if failures >= 3 else log.info)(
                "%s: canary timed out %d times in a row with no request finishing", model, failures)
        elif failures >= 2:
            await self._heal(model, reason, self._steps[model], reloads)

    def _mark_healthy(self, model: str) -> None:
        if model in self.state.broken:
            seconds = time.monotonic() - self._broken_since.pop(model, time.monotonic())
            del self.state.broken[model]
            self.recoveries.append((model, seconds))
            log.warning("%s healthy again, %.1f s after the failure was detected", model, seconds)

    async def _completions(self, model: str) -> int | None:
        """Requests the ensemble has finished so far (answered or failed), from Triton's statistics.
        If any finish while the canary waits, the pipeline flows: busy, not wedged."""
        counts = await self._counts(model)
        return sum(counts) if counts else None

    async def _counts(self, model: str) -> tuple[int, int] | None:
        """(succeeded, failed) requests of the ensemble so far, from Triton's statistics."""
        stats = await self._get_json(f"/v2/models/{model}/stats", timeout=2)
        if not stats:
            return None
        counts = [m.get("inference_stats", {}) for m in stats.get("model_stats", [])]
        return tuple(sum(int(c.get(k, {}).get("count", 0)) for c in counts) for k in ("success", "fail"))

    async def _heal(self, model: str, reason: str, broken: list[str], reloads: dict[str, int]) -> None:
        if model not in self._broken_since:
            log.error("%s failed its canary: %s", model, reason)
            self._broken_since[model] = time.monotonic()
        self.state.broken[model] = reason
        reloads[model] = reloads.get(model, 0) + 1
        if reloads[model] > self.health.reload_attempts:
            log.error("reloading did not bring %s back; restarting tritonserver", model)
            reloads[model] = 0
            await self._terminate()
            return
        log.warning("reloading %s for %s", ", ".join(broken), model)
        for name in broken:
            await self._control(name, "unload")
        for name in [*broken, model]:
            await self._control(name, "load")
        self.state.check_now.set()

    async def _control(self, model: str, action: str) -> None:
        url = f"{self.triton_http}/v2/repository/models/{model}/{action}"
        try:
            async with self._session.post(url, data=b"{}", headers=self.admin) as response:
                if response.status != 200:
                    log.error("%s %s: HTTP %d %s", action, model, response.status, (await response.text())[:300])
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            log.error("%s %s failed: %s", action, model, err)

    async def _discover(self) -> None:
        """Public models, ensemble steps and canary targets, from what tritonserver has loaded."""
        index = await self._get_json("/v2/repository/index", method="POST") or []
        configs = {}
        for entry in index:
            if entry.get("state") == "READY":
                configs[entry["name"]] = await self._get_json(f"/v2/models/{entry['name']}/config") or {}
        self._steps = {name: dependencies(name, configs) for name, c in configs.items()
                       if c.get("platform") == "ensemble"}
        self.state.internal = {step: name for name, steps in self._steps.items() for step in steps}
        self.state.public = sorted(set(configs) - set(self.state.internal))
        self._canary_models = {name for name, c in configs.items()
                               if name in self._steps and {"question", "context"} <= {i["name"] for i in c.get("input", [])}}
        self._broken_since.clear()
        self._checked_counts.clear()
        self.state.broken.clear()
        log.info("public models %s; canary through %s", self.state.public, sorted(self._canary_models))

    async def _get_status(self, path: str) -> int | None:
        try:
            async with self._session.get(self.triton_http + path, timeout=aiohttp.ClientTimeout(total=2)) as response:
                return response.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    async def _get_json(self, path: str, method: str = "GET", timeout: float | None = None):
        options = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
        try:
            async with self._session.request(
                method, self.triton_http + path, headers=self.admin, data=b"{}" if method == "POST" else None, **options
            ) as response:
                return await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None


def dependencies(ensemble: str, configs: dict[str, dict]) -> list[str]:
    """The models an ensemble runs: its steps, and the models those name in their parameters (a step
    that calls another model by BLS, e.g. qa_preprocess's ``bert_model``), transitively."""
    found: list[str] = []
    pending = [s["model_name"] for s in configs[ensemble].get("ensemble_scheduling", {}).get("step", [])]
    while pending:
        name = pending.pop(0)
        if name in found or name not in configs:
            continue
        found.append(name)
        parameters = configs[name].get("parameters", {}).values()
        pending += [p.get("string_value") for p in parameters if p.get("string_value") in configs]
    return found


def stuck_stubs(triton_pid: int, models: list[str]) -> dict[str, psutil.Process]:
    """{model: its Python-backend stub} for the stubs (children of tritonserver) of ``models`` that are
    stopped (SIGSTOP, a debugger). The stub's second argument is the model file:
    <repository>/<model>/<version>/<file>."""
    try:
        children = psutil.Process(triton_pid).children()
    except psutil.Error:
        return {}
    stuck = {}
    for child in children:
        try:
            args = child.cmdline()
            status = child.status()
        except psutil.ZombieProcess:
            continue  # its arguments are gone; Triton's own error names a dead stub
        except psutil.Error:
            continue
        if len(args) > 1 and args[0].endswith("triton_python_backend_stub"):
            model = os.path.basename(os.path.dirname(os.path.dirname(args[1])))
            if model in models and status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                stuck[model] = child
    return stuck


def front_command(command: list[str], triton_http_port: int) -> tuple[list[str], str, int]:
    """(tritonserver command with its HTTP endpoint moved to 127.0.0.1:``triton_http_port``, public
    HTTP address, public HTTP port): the front takes the address and port the command asked for."""
    values = {"--http-address": "0.0.0.0", "--http-port": "8000"}
    kept = []
    for arg in command:
        flag, _, value = arg.partition("=")
        if flag in values and value:
            values[flag] = value
        else:
            kept.append(arg)
    if not any(a.startswith("--metrics-address=") for a in kept):
        kept.append(f"--metrics-address={values['--http-address']}")  # it would follow the HTTP address
    kept += ["--http-address=127.0.0.1", f"--http-port={triton_http_port}"]
    return kept, values["--http-address"], int(values["--http-port"])


def main(argv: list[str] | None = None) -> int:
    """``python3 -m bertqa.supervisor [options] -- tritonserver ARGS``: a drop-in before a tritonserver
    command line. The front serves the --http-address/--http-port that ARGS name; tritonserver's own
    HTTP moves to 127.0.0.1:--triton-http-port. The admin key comes from $TRITON_ADMIN_KEY."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python3 -m bertqa.supervisor [options] -- tritonserver ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python3 -m bertqa.supervisor", description=main.__doc__)
    parser.add_argument("--triton-http-port", type=int, default=8010, help="tritonserver's own HTTP port, on 127.0.0.1")
    parser.add_argument("--startup-timeout", type=float, default=HealthConfig.startup_timeout_s)
    add_front_options(parser)
    args = parser.parse_args(argv[:split])
    key = os.environ.get("TRITON_ADMIN_KEY", "")
    if not key:
        print("TRITON_ADMIN_KEY must be set: the supervisor reloads models through the admin API", file=sys.stderr)
        return 2
    command, host, port = front_command(argv[split + 1:], args.triton_http_port)
    logging.basicConfig(level=logging.INFO, format="[bertqa-supervisor] %(message)s")
    supervisor = Supervisor(command, triton_http=f"127.0.0.1:{args.triton_http_port}", listen_host=host,
                            listen_port=port, admin_key=key, front=front_config(args),
                            health=health_config(args, startup_timeout_s=args.startup_timeout))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: supervisor.request_stop())
    code = supervisor.run()
    if supervisor.failure:
        log.error("%s", supervisor.failure)
    return code


def add_front_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `bertqa serve` and this module's command line."""
    parser.add_argument("--max-body-bytes", type=int, default=FrontConfig.max_body_bytes,
                        help="larger HTTP request bodies get 413 (default %(default)s)")
    parser.add_argument("--canary-interval", type=float, default=HealthConfig.canary_interval_s,
                        help="seconds between canary requests through each public ensemble")
    parser.add_argument("--canary-timeout", type=float, default=HealthConfig.canary_timeout_s)
    parser.add_argument("--expose-internal-models", action="store_true",
                        help="let clients run ensemble steps (qa_preprocess, bert_onnx, ...) directly over HTTP")


def front_config(args: argparse.Namespace) -> FrontConfig:
    return FrontConfig(max_body_bytes=args.max_body_bytes, expose_internal_models=args.expose_internal_models)


def health_config(args: argparse.Namespace, **overrides) -> HealthConfig:
    return HealthConfig(canary_interval_s=args.canary_interval, canary_timeout_s=args.canary_timeout, **overrides)


if __name__ == "__main__":
    sys.exit(main())
