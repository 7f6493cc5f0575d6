"""BERT question answering served by Triton Inference Server."""
