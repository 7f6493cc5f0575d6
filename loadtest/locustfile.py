"""Locust load test for the `bert_qa` ensemble on Triton, over REST (JSON or binary tensors) and gRPC.

    locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 1m --host http://localhost:8000 \
        --protocol http-json|http-binary|grpc [--model bert_qa] [--data squad.json] [--grpc-url host:8001]

User classes (one per protocol; --protocol picks one, default http-json; naming classes on the command line,
`locust -f loadtest/locustfile.py GrpcUser`, also works and may mix them):

* RestJsonUser    POST /v2/models/<model>/infer with Triton's JSON tensors (FastHttpUser)
* RestBinaryUser  the same endpoint with the binary tensor extension (Inference-Header-Content-Length)
* GrpcUser        tritonclient.grpc under gevent; every call is reported through events.request

A request counts as a failure when the server returns an error, the answer is empty, or the returned
character offsets do not reproduce the answer (context[start:end] != answer).
Every option below can also be set by its environment variable (BERTQA_*) or in a locust config file.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import random
import sys
import time
from urllib.parse import urlsplit

import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, events, task
from locust.runners import WorkerRunner

grpc_gevent.init_gevent()  # before any gRPC channel exists: gRPC I/O must yield to the other users' greenlets

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bertqa.client.qa_client import OUTPUTS, qa_inputs, qa_outputs

logger = logging.getLogger("bertqa.loadtest")

PROTOCOLS = ("http-json", "http-binary", "grpc")
DEFAULT_GRPC_PORT = 8001
TRUE_VALUES = {"1", "true", "yes", "on"}

# --------------------------------------------------------------------------------------------------
# Options


def _flag_requested(option: str, env_var: str) -> bool:
    """Whether a flag was given, before locust parses its options (it picks shape classes at import time)."""
    return option in sys.argv[1:] or str(os.environ.get(env_var, "")).strip().lower() in TRUE_VALUES


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    add_target_options(parser)
    add_step_load_options(parser)


def add_target_options(parser) -> None:
    """What to query, with what, and how long to wait."""
    parser.add_argument(
        "--model", env_var="BERTQA_MODEL", default="bert_qa", help="model to query (default bert_qa)"
    )
    parser.add_argument(
        "--protocol",
        env_var="BERTQA_PROTOCOL",
        choices=PROTOCOLS,
        default=None,
        help="user class to run: http-json (RestJsonUser, the default), http-binary (RestBinaryUser) or grpc "
        "(GrpcUser); user classes named on the command line are used instead when this is not given",
    )
    parser.add_argument(
        "--data",
        env_var="BERTQA_DATA",
        default="",
        help="SQuAD JSON or JSON Lines file of question/context pairs (default: SQuAD v1.1 dev pairs when fetched "
        "by `bertqa data squad`, else the built-in generated set)",
    )
    parser.add_argument(
        "--grpc-url",
        env_var="BERTQA_GRPC_URL",
        default="",
        help=f"gRPC endpoint host:port (default: the --host name with port {DEFAULT_GRPC_PORT})",
    )
    parser.add_argument(
        "--request-timeout",
        env_var="BERTQA_REQUEST_TIMEOUT",
        type=float,
        default=60.0,
        help="seconds before a request counts as failed (default 60)",
    )


def add_step_load_options(parser) -> None:
    parser.add_argument(
        "--step-load",
        env_var="BERTQA_STEP_LOAD",
        action="store_true",
        default=False,
        include_in_web_ui=False,
        help="use the step-load shape (loadtest/shapes.py); -t is its time limit. Must be on the command line "
        "or in the environment, not in a config file",
    )
    parser.add_argument(
        "--step-users", env_var="BERTQA_STEP_USERS", type=int, default=2, help="users added per step (default 2)"
    )
    parser.add_argument(
        "--step-time", env_var="BERTQA_STEP_TIME", type=float, default=30.0, help="seconds per step (default 30)"
    )
    parser.add_argument(
        "--step-max-users", env_var="BERTQA_STEP_MAX_USERS", type=int, default=16, help="most users (default 16)"
    )


if _flag_requested("--step-load", "BERTQA_STEP_LOAD"):
    # Locust runs the first LoadTestShape it finds in a locustfile's namespace: import it only when asked.
    from shapes import StepLoadShape  # noqa: F401


def grpc_target(host: str | None, grpc_url: str = "") -> str:
    """The gRPC host:port: --grpc-url, else a grpc:// --host, else the --host name with port 8001."""
    for url in (grpc_url, host if (host or "").startswith("grpc://") else ""):
        if url:
            return url.split("://", 1)[-1].rstrip("/")
    host = host or "localhost"
    name = urlsplit(host if "://" in host else f"http://{host}").hostname or "localhost"
    return f"[{name}]:{DEFAULT_GRPC_PORT}" if ":" in name else f"{name}:{DEFAULT_GRPC_PORT}"


# --------------------------------------------------------------------------------------------------
# Corpus and request bodies (built once per process and reused by every user)


@functools.cache
def load_pairs(data: str = "") -> tuple[tuple[str, str], ...]:
    """--data's pairs, else what `bertqa bench` sends: real SQuAD v1.1 dev pairs when dev has been fetched
    (`bertqa data squad`), else the built-in generated set (bertqa.client.data)."""
    from bertqa.client.data import DEFAULT_SAMPLES, load_examples

    pairs = load_examples(data or None, count=0 if data else DEFAULT_SAMPLES)
    logger.info("corpus: %d question/context pairs from %s", len(pairs.examples), pairs.source)
    return tuple((e.question, e.context) for e in pairs.examples)


@functools.cache
def json_bodies(data: str) -> tuple[bytes, ...]:
    return tuple(
        json.dumps(
            {
                "inputs": [
                    {"name": "question", "shape": [1, 1], "datatype": "BYTES", "data": [question]},
                    {"name": "context", "shape": [1, 1], "datatype": "BYTES", "data": [context]},
                ],
                "outputs": [{"name": n} for n in OUTPUTS],
            }
        ).encode("utf-8")
        for question, context in load_pairs(data)
    )


@functools.cache
def binary_bodies(data: str) -> tuple[tuple[bytes, int], ...]:
    """(body, JSON header length) per pair, from tritonclient's own request-body generator."""
    bodies = []
    for question, context in load_pairs(data):
        inputs, outputs = qa_inputs(httpclient, [question], [context], True), qa_outputs(httpclient, True)
        body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
        bodies.append((body, len(body) if json_size is None else json_size))
    return tuple(bodies)


@functools.cache
def grpc_tensors(data: str) -> tuple[tuple[list, list], ...]:
    return tuple((qa_inputs(grpcclient, [q], [c]), qa_outputs(grpcclient)) for q, c in load_pairs(data))


# --------------------------------------------------------------------------------------------------
# Answer checks


class AnswerError(Exception):
    """A response that arrived but does not answer the question; the message groups errors in the report."""


class GrpcCallError(Exception):
    """A failed gRPC call; unlike InferenceServerException, its repr (locust's error report) shows the message."""


def check_answer(answer: str, start: int, end: int, context: str) -> None:
    if not answer:
        raise AnswerError("no answer in the response")
    if not 0 <= start <= end <= len(context) or context[start:end] != answer:
        raise AnswerError("answer offsets do not match the context (context[start:end] != answer)")


def _first(values) -> object:
    while isinstance(values, list):
        if not values:
            raise AnswerError("empty output tensor")
        values = values[0]
    return values


def check_json_response(body: dict, context: str) -> None:
    outputs = {o.get("name"): o.get("data") for o in body.get("outputs", [])}
    missing = [n for n in ("answer", "start", "end") if outputs.get(n) is None]
    if missing:
        raise AnswerError(f"response lacks outputs {', '.join(missing)}")
    check_answer(str(_first(outputs["answer"])), int(_first(outputs["start"])), int(_first(outputs["end"])), context)


def check_infer_result(result, context: str) -> None:
    """A tritonclient InferResult (HTTP binary or gRPC)."""
    arrays = {n: result.as_numpy(n) for n in ("answer", "start", "end")}
    missing = [n for n, a in arrays.items() if a is None or a.size == 0]
    if missing:
        raise AnswerError(f"response lacks outputs {', '.join(missing)}")
    answer = arrays["answer"].reshape(-1)[0]
    answer = answer.decode("utf-8") if isinstance(answer, bytes) else str(answer)
    check_answer(answer, int(arrays["start"].reshape(-1)[0]), int(arrays["end"].reshape(-1)[0]), context)


def _http_error(response) -> str:
    """Triton's JSON error text ({"error": "..."}), else the transport error, for the failure report."""
    try:
        message = json.loads(response.content or b"{}").get("error", "")
    except (ValueError, AttributeError):
        message = ""
    return f"HTTP {response.status_code}: {message or response.error or 'error'}"


# --------------------------------------------------------------------------------------------------
# Users


def _request_timeout(environment) -> float:
    return float(getattr(environment.parsed_options, "request_timeout", 60.0) or 60.0)


class _QAUserMixin:
    """Per user: the options and a cycle through the corpus from a random starting pair."""

    def _setup(self) -> None:
        options = self.environment.parsed_options
        self.model = getattr(options, "model", None) or "bert_qa"
        self.data = getattr(options, "data", "") or ""
        self.request_timeout = _request_timeout(self.environment)
        self.pairs = load_pairs(self.data)
        offset = random.randrange(len(self.pairs))
        self.order = itertools.cycle(list(range(offset, len(self.pairs))) + list(range(offset)))


class _RestUser(_QAUserMixin, FastHttpUser):
    abstract = True

    def __init__(self, environment):
        # FastHttpUser builds its session from these in __init__.
        self.network_timeout = self.connection_timeout = _request_timeout(environment)
        super().__init__(environment)


    def _post_checked(self, body, headers: dict, kind: str, check) -> None:
        """POSTs one inference; a non-200 status, a missing answer or wrong offsets is a failure."""
        with self.client.post(
            self.path, data=body, headers=headers, name=f"{self.path} [{kind}]", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(_http_error(response))
                return
            try:
                check(response)
            except AnswerError as err:
                response.failure(err)
            except Exception as err:  # noqa: BLE001 - any body that cannot be parsed is a failure
                response.failure(f"unreadable response: {type(err).__name__}: {err}")


class RestJsonUser(_RestUser):
    """Triton's REST protocol with JSON tensors."""

    def on_start(self) -> None:
        self._setup()
        self.bodies = json_bodies(self.data)
        self.path = f"/v2/models/{self.model}/infer"

    @task
    def ask(self) -> None:
        index = next(self.order)
        context = self.pairs[index][1]
        self._post_checked(
            self.bodies[index],
            {"Content-Type": "application/json"},
            "json",
            lambda response: check_json_response(json.loads(response.content), context),
        )


class RestBinaryUser(_RestUser):
    """Triton's REST protocol with the binary tensor data extension, bodies made by tritonclient.http."""

    def on_start(self) -> None:
        self._setup()
        self.bodies = binary_bodies(self.data)
        self.path = f"/v2/models/{self.model}/infer"

    @task
    def ask(self) -> None:
        index = next(self.order)
        body, json_size = self.bodies[index]
        context = self.pairs[index][1]

        def check(response) -> None:
            header_length = response.headers.get("Inference-Header-Content-Length")
            result = httpclient.InferResult.from_response_body(
                response.content, False, int(header_length) if header_length else None
            )
            check_infer_result(result, context)

        self._post_checked(
            body,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)},
            "binary",
            check,
        )


class _GrpcClient(grpcclient.InferenceServerClient):
    """tritonclient.grpc's client without its closing finalizer: GrpcUser.on_stop closes it, once.

    tritonclient closes the channel again in __del__. Under gevent that second close may run while the
    interpreter exits, after gRPC's gevent poller is gone, and block the process for ever once the summary
    is printed (8 of 40 short headless gRPC runs hung here with tritonclient's class, none of 40 with this one)."""

    def __del__(self) -> None:
        pass


class GrpcUser(_QAUserMixin, User):
    """Triton's gRPC protocol through tritonclient.grpc; each call is fired as a locust request event."""

    def on_start(self) -> None:
        self._setup()
        self.tensors = grpc_tensors(self.data)
        grpc_url = getattr(self.environment.parsed_options, "grpc_url", "")
        self.target = grpc_target(self.environment.host or self.host, grpc_url)
        self.client = _GrpcClient(self.target)
        self.request_name = f"{self.model} ModelInfer"

    def on_stop(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()

    @task
    def ask(self) -> None:
        index = next(self.order)
        inputs, outputs = self.tensors[index]
        began = time.perf_counter()
        result, exception, response_length = None, None, 0
        try:
            result = self.client.infer(self.model, inputs, outputs=outputs, client_timeout=self.request_timeout)
        except Exception as err:  # noqa: BLE001 - InferenceServerException, timeouts; not GreenletExit (BaseException)
            exception = GrpcCallError(str(err))
        response_time = (time.perf_counter() - began) * 1e3
        if result is not None:
            response_length = result.get_response().ByteSize()
            try:
                check_infer_result(result, self.pairs[index][1])
            except Exception as err:  # noqa: BLE001 - AnswerError or an unreadable result: a failure either way
                exception = err
        self.environment.events.request.fire(
            request_type="grpc",
            name=self.request_name,
            response_time=response_time,
            response_length=response_length,
            exception=exception,
            context={},
        )


USER_CLASSES = {"http-json": RestJsonUser, "http-binary": RestBinaryUser, "grpc": GrpcUser}


@events.init.add_listener
def select_user_class(environment, **_kwargs) -> None:
    """Checks --data; --protocol picks the user class (workers run what the master dispatches: they keep all)."""
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return
    try:
        load_pairs(getattr(options, "data", "") or "")  # a bad --data file stops locust here, with its reason
    except (OSError, ValueError) as err:
        logger.error("--data: %s", err)
        sys.exit(1)
    protocol = options.protocol
    if options.user_classes:
        chosen = {c.__name__ for c in environment.user_classes}
        if protocol and chosen != {USER_CLASSES[protocol].__name__}:
            logger.error("--protocol %s contradicts the user classes named: %s", protocol, ", ".join(sorted(chosen)))
            sys.exit(1)
        return
    if protocol is None and getattr(options, "class_picker", False):
        return  # the web UI's class picker chooses
    environment.user_classes[:] = [USER_CLASSES[protocol or "http-json"]]


@events.test_start.add_listener
def describe_run(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return
    pairs = load_pairs(getattr(options, "data", "") or "")
    names = ", ".join(c.__name__ for c in environment.user_classes)
    target = environment.host
    if any(c is GrpcUser for c in environment.user_classes):
        target = f"{target} (gRPC {grpc_target(environment.host, options.grpc_url)})"
    logger.info(
        "bertqa load test: %s -> model %s at %s, %d question/context pairs", names, options.model, target, len(pairs)
    )
