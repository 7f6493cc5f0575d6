"""What the HTTP front costs: the same requests to tritonserver's own HTTP port and through the front.

    python -m benchmarks.front_overhead [--requests 400] [--concurrency 1,8]

Starts `bertqa serve` on free ports (the front runs in that process, tritonserver is its child),
finds tritonserver's loopback HTTP port, warms up, then runs direct and fronted rounds alternately
(so drift from other load on the machine hits both alike) with keep-alive connections, one per
client thread. Prints p50/p99 latency, throughput, and the front's CPU time per request (CPU of the
`bertqa serve` process, which does nothing else meanwhile but a canary every 2 s).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from bertqa.canary import canary_body, probe
from bertqa.server import free_ports

BODY = canary_body()


def run_round(port: int, requests: int, concurrency: int) -> tuple[list[float], float]:
    """(latencies in seconds, wall seconds) for ``requests`` POSTs over ``concurrency`` connections."""
    per_client = requests // concurrency

    def client(_):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies = []
        for _ in range(per_client):
            began = time.perf_counter()
            connection.request("POST", "/v2/models/bert_qa/infer", BODY, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            latencies.append(time.perf_counter() - began)
        connection.close()
        return latencies

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for part in pool.map(client, range(concurrency)) for x in part]
    return latencies, time.perf_counter() - began


def triton_http_port(serve: psutil.Process) -> int:
    for child in serve.children(recursive=True):
        for arg in child.cmdline():
            if arg.startswith("--http-port="):
                return int(arg.split("=", 1)[1])
    raise RuntimeError("tritonserver not found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="direct/front round pairs per concurrency")
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    http_port, grpc_port, metrics_port = free_ports(3)
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "bertqa"), "serve", "--http-port", str(http_port), "--grpc-port",
         str(grpc_port), "--metrics-port", str(metrics_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not probe(f"127.0.0.1:{http_port}", timeout=5).ok:
            if time.monotonic() > deadline or serve.poll() is not None:
                raise SystemExit("bertqa serve did not come up")
            time.sleep(0.5)
        front_process = psutil.Process(serve.pid)
        ports = {"direct": triton_http_port(front_process), "front": http_port}
        for port in ports.values():
            run_round(port, 100, 4)  # warm-up
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            measured = {"direct": ([], 0.0, 0.0), "front": ([], 0.0, 0.0)}
            for _ in range(args.rounds):
                for name, port in ports.items():
                    cpu_before = sum(front_process.cpu_times()[:2])
                    latencies, wall = run_round(port, args.requests, concurrency)
                    cpu = sum(front_process.cpu_times()[:2]) - cpu_before
                    old = measured[name]
                    measured[name] = (old[0] + latencies, old[1] + wall, old[2] + cpu)
            for name, (latencies, wall, cpu) in measured.items():
                latencies.sort()
                print(f"concurrency {concurrency:>2} {name:>6}: p50 {statistics.median(latencies) * 1e3:6.2f} ms  "
                      f"p99 {latencies[int(len(latencies) * 0.99)] * 1e3:6.2f} ms  "
                      f"{len(latencies) / wall:7.1f} req/s  front CPU {cpu / len(latencies) * 1e3:5.2f} ms/request")
    finally:
        serve.terminate()
        serve.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
