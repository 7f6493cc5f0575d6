"""Latency of one question over long contexts (5,000 to 40,000 words) against a running server.

    python -m benchmarks.long_documents --url 127.0.0.1:8000 [--words 5000,10000,20000,40000]
                                        [--repeats 3] [--markdown docs/LONG_DOCUMENTS.md]

Contexts are real prose: paragraphs of the committed SQuAD v1.1 dev slice, concatenated, with the
paragraph that answers a real dev question placed two thirds of the way in. Each length is sent
``--repeats`` times after one warm-up request, one request at a time (HTTP); the table gives the
median latency, the windows the context needs (``bertqa.text`` with the served windowing) and the
time per window, and a least-squares line through (windows, latency) shows whether latency grows
linearly. The plot (PNG beside the markdown) shows the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertqa.squad import dev_slice_path


@dataclass
class Point:
    words: int
    windows: int
    seconds: list[float]
    answer: str
    expected: list[str]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def long_context(words: int, data_file: Path = None) -> tuple[str, str, list[str]]:
    """(question, context of about ``words`` words, accepted answers) from the SQuAD dev slice."""
    data = json.loads(Path(data_file or dev_slice_path()).read_text(encoding="utf-8"))
    paragraphs = [p for article in data["data"] for p in article["paragraphs"]]
    target = paragraphs[0]
    qa = target["qas"][0]
    filler = [p["context"] for p in paragraphs[1:]]
    body: list[str] = []
    count, i = len(target["context"].split()), 0
    while count < words:
        body.append(filler[i % len(filler)])
        count += len(body[-1].split())
        i += 1
    body.insert(len(body) * 2 // 3, target["context"])
    return qa["question"], "\n\n".join(body), [a["text"] for a in qa["answers"]]


def windows_needed(question: str, context: str, repository: Path) -> int:
    from dataclasses import replace

    from bertqa.reference import _parameters
    from bertqa.text import QAWindower, load_tokenizer
    from bertqa.triton.params import PreprocessParameters

    pre = _parameters(repository / "qa_preprocess" / "config.pbtxt", PreprocessParameters)
    windowing = replace(pre.windowing(), max_windows=1_000_000)
    windower = QAWindower(load_tokenizer(repository / "qa_preprocess" / "1" / pre.tokenizer_file), windowing)
    return windower.windows([question], [context]).num_windows


def ask(client, question: str, context: str, model: str) -> tuple[float, str]:
    import tritonclient.http as http

    inputs = [http.InferInput("question", [1, 1], "BYTES"), http.InferInput("context", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[question.encode()]], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[context.encode()]], dtype=object))
    start = time.perf_counter()
    result = client.infer(model, inputs)
    return time.perf_counter() - start, result.as_numpy("answer")[0][0].decode()


def measure(url: str, model: str, lengths: list[int], repeats: int, repository: Path) -> list[Point]:
    import tritonclient.http as http
    from rich.progress import track

    client = http.InferenceServerClient(url, network_timeout=1800, connection_timeout=1800)
    points = []
    try:
        ask(client, *long_context(lengths[0])[:2], model)  # warm-up
        for words in track(lengths, description="long contexts"):
            question, context, expected = long_context(words)
            runs = [ask(client, question, context, model) for _ in range(repeats)]
            points.append(Point(words, windows_needed(question, context, repository), [s for s, _ in runs],
                                runs[-1][1], expected))
    finally:
        client.close()
    return points


def linear_fit(points: list[Point]) -> tuple[float, float, float]:
    """(seconds per window, intercept, R^2) of latency against windows."""
    x = np.array([p.windows for p in points], dtype=float)
    y = np.array([p.median for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum()) if len(points) > 2 else 1.0
    return float(slope), float(intercept), r2


def markdown(points: list[Point], url: str, model: str, plot_name: str) -> str:
    slope, intercept, r2 = linear_fit(points)
    rows = [f"| {p.words:,} | {p.windows} | {p.median:.2f} | {min(p.seconds):.2f} | {1000 * p.median / p.windows:.1f} "
            f"| {p.answer!r} ({'correct' if p.answer in p.expected else 'expected ' + repr(p.expected[0])}) |"
            for p in points]
    return "\n".join([
        "# Long documents: latency against context length",
        "",
        f"`python -m benchmarks.long_documents --url {url} --model {model}`: one question per context, one request "
        "at a time over HTTP, median of the repeats after a warm-up. Contexts are paragraphs of the committed "
        "SQuAD v1.1 dev slice with the answering paragraph two thirds of the way in.",
        "",
        "| words | windows | median s | best s | ms per window | answer |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Least-squares line through (windows, median latency): {1000 * slope:.1f} ms per window + "
        f"{1000 * intercept:.0f} ms, R² = {r2:.4f} (1.0 = exactly linear).",
        "",
        f"![latency against windows]({plot_name})",
        "",
    ])


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slope, intercept, r2 = linear_fit(points)
    x = np.array([p.windows for p in points])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [p.median for p in points], "o", label="median latency")
    ax.plot(x, slope * x + intercept, "-", label=f"linear fit, R² {r2:.3f}")
    for p in points:
        ax.annotate(f"{p.words:,} words", (p.windows, p.median), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("windows of 384 tokens")
    ax.set_ylabel("seconds")
    ax.set_title("One question over a long context")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of Triton's HTTP endpoint")
    parser.add_argument("--model", default="bert_qa")
    parser.add_argument("--words", default="5000,10000,20000,40000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="the served repository (for the windowing and tokenizer used to count windows)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table (and a PNG beside it)")
    args = parser.parse_args(argv)
    points = measure(args.url, args.model, [int(w) for w in args.words.split(",")], args.repeats, args.repository)
    png = args.markdown.with_suffix(".png") if args.markdown else None
    text = markdown(points, args.url, args.model, png.name if png else "long_documents.png")
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
        plot(points, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
