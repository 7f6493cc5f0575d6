"""Cuts the committed slice of SQuAD v1.1 dev (`bertqa/data/squad-v1.1-dev-slice.json`).

Deterministic, no randomness: from each of the 48 dev articles the middle paragraph (index
``len(paragraphs) // 2``), plus the ``longest`` paragraphs of the whole dev set by character count
(they need several 384-token windows), every question of each chosen paragraph, in dev order.

``python -m bertqa.export.demo.dev_slice [--dev data/squad/dev-v1.1.json] [--output PATH]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertqa.files import atomic_write_text
from bertqa.squad import dev_slice_path, squad_file


def dev_slice(dev: dict, longest: int = 4) -> dict:
    """The slice of the official dev JSON ``dev`` (same format: data -> paragraphs -> qas)."""
    articles = dev["data"]
    by_length = sorted(
        ((len(p["context"]), a, i) for a, article in enumerate(articles) for i, p in enumerate(article["paragraphs"])),
        reverse=True,
    )
    chosen = {(a, i) for _, a, i in by_length[:longest]}
    chosen |= {(a, len(article["paragraphs"]) // 2) for a, article in enumerate(articles)}
    data = []
    for a, article in enumerate(articles):
        paragraphs = [p for i, p in enumerate(article["paragraphs"]) if (a, i) in chosen]
        if paragraphs:
            data.append({"title": article["title"], "paragraphs": paragraphs})
    return {"version": dev.get("version", "1.1"), "data": data}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=None, help="default: the fetched dev-v1.1.json")
    parser.add_argument("--output", type=Path, default=dev_slice_path())
    parser.add_argument("--longest", type=int, default=4, help="how many of the longest dev paragraphs to add")
    args = parser.parse_args(argv)
    dev = json.loads((args.dev or squad_file("dev")).read_text(encoding="utf-8"))
    sliced = dev_slice(dev, args.longest)
    atomic_write_text(args.output, json.dumps(sliced, ensure_ascii=False, indent=1) + "\n")
    questions = sum(len(p["qas"]) for article in sliced["data"] for p in article["paragraphs"])
    print(f"{args.output}: {questions} questions in {sum(len(a['paragraphs']) for a in sliced['data'])} paragraphs")


if __name__ == "__main__":
    main()
