"""Canary: one known question through the public ensemble, the answer checked.

    python3 -m bertqa.canary --url http://127.0.0.1:8000 [--model bert_qa] [--timeout 5] [--expect Paris]

Exit 0 when the answer came back and is consistent (non-empty, ``context[start:end] == answer``,
and equal to ``--expect`` when given); exit 1 with a one-line reason on stderr otherwise. Standard
library only: it runs as a compose health check / Kubernetes probe inside the Triton image, and the
supervisor (bertqa.supervisor) uses ``probe`` to notice a dead or wedged model instance within seconds,
which Triton's own readiness does not (a killed Python-backend stub leaves the model "ready").
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

QUESTION = "What is the capital of France?"
CONTEXT = "Paris is the capital and most populous city of France."


@dataclass(frozen=True)
class CanaryResult:
    ok: bool
    reason: str
    seconds: float
    status: int | None = None  # HTTP status, None when no response came back

    def __bool__(self) -> bool:
        return self.ok


def base_url(url: str) -> str:
    """``host:port`` or ``http://host:port[/]`` -> ``http://host:port``."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def canary_body(question: str = QUESTION, context: str = CONTEXT) -> bytes:
    inputs = [
        {"name": "question", "shape": [1, 1], "datatype": "BYTES", "data": [question]},
        {"name": "context", "shape": [1, 1], "datatype": "BYTES", "data": [context]},
    ]
    return json.dumps({"inputs": inputs}).encode()


def check_answer(body: dict, context: str = CONTEXT, expect: str | None = None, require_answer: bool = True) -> str | None:
    """None when the response holds a consistent answer, else what is wrong with it."""
    try:
        outputs = {o["name"]: o["data"] for o in body["outputs"]}
        answer, score = outputs["answer"][0], float(outputs["score"][0])
        start, end = int(outputs["start"][0]), int(outputs["end"][0])
    except (KeyError, IndexError, TypeError, ValueError) as err:
        return f"malformed response ({type(err).__name__}: {err})"
    if not answer and require_answer:
        return "empty answer"
    if context[start:end] != answer:
        return f"answer {answer!r} does not match the context at [{start}, {end})"
    if not math.isfinite(score):
        return f"score is {score}"
    if expect is not None and answer != expect:
        return f"answer {answer!r}, expected {expect!r}"
    return None


def probe(url: str, model: str = "bert_qa", timeout: float = 5.0, expect: str | None = None,
          require_answer: bool = True) -> CanaryResult:
    """Sends the canary question to ``url`` (a Triton-compatible HTTP endpoint) and checks the answer."""
    request = urllib.request.Request(
        f"{base_url(url)}/v2/models/{model}/infer",
        data=canary_body(),
        headers={"Content-Type": "application/json"},
    )
    began = time.monotonic()
    elapsed = lambda: time.monotonic() - began  # noqa: E731
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as err:
        message = _error_message(err.read())
        return CanaryResult(False, f"{model}: HTTP {err.code}: {message}", elapsed(), err.code)
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        return CanaryResult(False, f"{model}: no answer within {timeout:g} s ({reason})", elapsed())
    try:
        problem = check_answer(json.loads(payload), expect=expect, require_answer=require_answer)
    except ValueError:
        problem = "response is not JSON"
    if problem:
        return CanaryResult(False, f"{model}: {problem}", elapsed(), status)
    return CanaryResult(True, "ok", elapsed(), status)


def _error_message(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", "")) or payload[:200].decode(errors="replace")
    except (ValueError, AttributeError):
        return payload[:200].decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bertqa.canary", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="HTTP endpoint (host:port or http://host:port)")
    parser.add_argument("--model", default="bert_qa", help="public question-answering model (an ensemble)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    parser.add_argument("--expect", default=None, help="the exact answer text to require (default: any consistent answer)")
    args = parser.parse_args(argv)
    result = probe(args.url, args.model, args.timeout, args.expect)
    if not result:
        print(f"canary failed: {result.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
