"""loadtest/locustfile.py: headless locust runs against the real tritonserver, one per protocol, and proof
that failures are detected (an unknown model; answers whose offsets do not match, from a stub server).

Locust runs as a subprocess: importing locust here would monkey-patch this pytest process with gevent.
Totals come from the summary locust prints at exit (its CSV files may be written before the last
requests are counted).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtest" / "locustfile.py"
MIN_REQUESTS = 40  # in 10 s with 4 users: the server answers hundreds; 40 still holds on a crowded 2-core host
REQUEST_NAMES = {
    "http-json": "/v2/models/bert_qa/infer [json]",
    "http-binary": "/v2/models/bert_qa/infer [binary]",
    "grpc": "bert_qa ModelInfer",
}

LOADTEST_VARIABLES = (
    "LOCUST_", "BERTQA_MODEL", "BERTQA_PROTOCOL", "BERTQA_DATA", "BERTQA_GRPC_URL", "BERTQA_REQUEST_TIMEOUT",
    "BERTQA_STEP",
)  # fmt: skip

pytestmark = pytest.mark.slow

# "POST     /v2/models/bert_qa/infer [json]     1468     0(0.00%) |     20       3     333     16 |  190.19   0.00"
STATS_LINE = re.compile(
    r"^(?P<type>\S*)\s+(?P<name>.+?)\s+(?P<requests>\d+)\s+(?P<failures>\d+)\(\s*[\d.]+%\)\s+\|"
    r"\s+(?P<avg>\d+)\s+(?P<min>\d+)\s+(?P<max>\d+)\s+(?P<median>\d+)\s+\|\s+(?P<rps>[\d.]+)\s+(?P<fps>[\d.]+)\s*$"
)


@dataclass
class Entry:
    requests: int
    failures: int
    rps: float


@dataclass
class LocustRun:
    returncode: int
    output: str
    entries: dict[str, Entry]  # request name -> totals, "Aggregated" included

    @property
    def total(self) -> Entry:
        return self.entries["Aggregated"]


def parse_summary(output: str) -> dict[str, Entry]:
    entries = {}
    for line in output.splitlines():
        if match := STATS_LINE.match(line):
            entries[match["name"].strip()] = Entry(int(match["requests"]), int(match["failures"]), float(match["rps"]))
    return entries


def run_locust(*args: str, run_time: str | None, timeout_s: float = 60, env: dict | None = None) -> LocustRun:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--exit-code-on-error", "1", "--loglevel", "INFO", *(["-t", run_time] if run_time else []), *args,
    ]  # fmt: skip
    # Only the arguments count: no LOCUST_*/BERTQA_* settings from the caller's shell, and a working
    # directory (the locustfile's) without a locust.conf.
    # The built-in pairs unless a test says otherwise: results must not depend on whether this checkout
    # has fetched SQuAD (BERTQA_DATA_DIR without it).
    hermetic = {"BERTQA_DATA_DIR": os.devnull}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(LOADTEST_VARIABLES)}, **hermetic, **(env or {})}
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=LOCUSTFILE.parent
    )
    output = result.stdout + result.stderr
    return LocustRun(result.returncode, output, parse_summary(output))


def aggregated_csv_row(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["Name"] == "Aggregated"]
    assert rows, f"no Aggregated row in {path}"
    return rows[-1]


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
def test_headless_run_has_no_failures_and_writes_reports(protocol, triton_server, tmp_path):
    http_port = triton_server.http_url.rsplit(":", 1)[1]
    grpc_port = triton_server.grpc_url.rsplit(":", 1)[1]
    # gRPC: the target comes from a grpc:// --host (the other way, --grpc-url, is used below).
    host = f"grpc://127.0.0.1:{grpc_port}" if protocol == "grpc" else f"http://127.0.0.1:{http_port}"
    prefix, html = tmp_path / "locust", tmp_path / "locust.html"
    run = run_locust(
        "-u", "4", "-r", "4", "--host", host, "--protocol", protocol, "--csv", str(prefix), "--html", str(html),
        run_time="10s",
    )  # fmt: skip

    assert run.returncode == 0, run.output[-4000:]
    assert set(run.entries) == {REQUEST_NAMES[protocol], "Aggregated"}, run.output[-4000:]
    assert run.total.failures == 0, run.output[-4000:]
    assert run.total.requests >= MIN_REQUESTS, run.output[-4000:]
    assert "Response time percentiles" in run.output

    for suffix in ("stats", "stats_history", "failures", "exceptions"):
        assert (tmp_path / f"locust_{suffix}.csv").is_file(), suffix
    row = aggregated_csv_row(tmp_path / "locust_stats.csv")
    assert 0 < int(row["Request Count"]) <= run.total.requests
    assert int(row["Failure Count"]) == 0
    assert html.is_file() and REQUEST_NAMES[protocol] in html.read_text(encoding="utf-8")


def test_unknown_model_fails_on_every_protocol(triton_server, tmp_path):
    """All three user classes at once (locust's own class selection) against a model that does not exist."""
    run = run_locust(
        "-u", "3", "-r", "3", "--host", f"http://{triton_server.http_url}", "--grpc-url", triton_server.grpc_url,
        "--model", "no_such_model", "--csv", str(tmp_path / "bad"), "RestJsonUser", "RestBinaryUser", "GrpcUser",
        run_time="3s",
    )  # fmt: skip

    assert run.returncode == 1, run.output[-4000:]
    names = {n.replace("bert_qa", "no_such_model") for n in REQUEST_NAMES.values()}
    assert set(run.entries) == names | {"Aggregated"}, run.output[-4000:]
    for name in names:
        assert run.entries[name].requests > 0
        assert run.entries[name].failures == run.entries[name].requests, name
    assert "Error report" in run.output
    assert run.output.count("unknown model") >= 3, run.output[-4000:]
    assert int(aggregated_csv_row(tmp_path / "bad_stats.csv")["Failure Count"]) > 0


# --------------------------------------------------------------------------------------------------
# A stub of Triton's REST endpoint: answers with valid Triton JSON whose content the test chooses.


class StubTriton(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    replies = itertools.count()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        model = self.path.split("/")[3]
        if model == "good":  # JSON requests only: the first 5 characters of the context, with their offsets
            context = next(i["data"][0] for i in json.loads(body)["inputs"] if i["name"] == "context")
            answer, start, end = context[:5], 0, 5
        elif next(self.replies) % 2:
            answer, start, end = "", 0, 0  # no answer
        else:
            answer, start, end = "Zürich", 3, 9  # offsets that point elsewhere in any context
        outputs = [
            {"name": "answer", "datatype": "BYTES", "shape": [1, 1], "data": [answer]},
            {"name": "score", "datatype": "FP32", "shape": [1, 1], "data": [0.5]},
            {"name": "start", "datatype": "INT64", "shape": [1, 1], "data": [start]},
            {"name": "end", "datatype": "INT64", "shape": [1, 1], "data": [end]},
        ]
        payload = json.dumps({"model_name": model, "model_version": "1", "outputs": outputs}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def stub_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubTriton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_missing_answers_and_wrong_offsets_are_failures(stub_url):
    run = run_locust(
        "-u", "2", "-r", "2", "--host", stub_url, "--model", "bad", "RestJsonUser", "RestBinaryUser", run_time="2s"
    )  # fmt: skip

    assert run.returncode == 1, run.output[-4000:]
    assert run.total.requests > 0 and run.total.failures == run.total.requests, run.output[-4000:]
    assert "no answer in the response" in run.output
    assert "answer offsets do not match the context" in run.output


def test_step_load_adds_users_per_step_and_stops_by_itself(stub_url):
    """--step-load: 1 user, then 2, each step 1 s, no -t (the shape holds the maximum one step, then stops)."""
    run = run_locust(
        "--host", stub_url, "--model", "good", "--protocol", "http-json",
        "--step-load", "--step-users", "1", "--step-time", "1", "--step-max-users", "2",
        run_time=None,
        timeout_s=30,
    )  # fmt: skip

    assert run.returncode == 0, run.output[-4000:]
    assert "Shape test updating to 1 users" in run.output
    assert "Shape test updating to 2 users" in run.output
    assert len(re.findall(r"step +\d+ users: .* req/s", run.output)) == 2, run.output[-4000:]
    assert run.total.requests > 0 and run.total.failures == 0, run.output[-4000:]


@pytest.mark.parametrize("fetched", [True, False])
def test_default_pairs_are_squad_dev_when_fetched(stub_url, tmp_path, fetched):
    """No --data: real SQuAD v1.1 dev pairs when `bertqa data squad` has fetched dev, else the built-in set;
    the log says which. BERTQA_DATA_DIR holds the committed dev slice in place of the full file."""
    import shutil

    from bertqa.squad import dev_slice_path

    if fetched:
        (tmp_path / "squad").mkdir()
        shutil.copy(dev_slice_path(), tmp_path / "squad" / "dev-v1.1.json")
    run = run_locust(
        "-u", "1", "-r", "1", "--host", stub_url, "--model", "good", "--protocol", "http-json", run_time="2s",
        env={"BERTQA_DATA_DIR": str(tmp_path)},
    )  # fmt: skip

    assert run.returncode == 0 and run.total.requests > 0, run.output[-4000:]
    expected = "from SQuAD v1.1 dev" if fetched else "from the built-in generated set"
    assert re.search(r"corpus: \d+ question/context pairs " + expected, run.output), run.output[-4000:]
