"""`make bench`: side-by-side benchmarks of the served and in-process BERT QA paths (docs/BENCHMARKS.md)."""
