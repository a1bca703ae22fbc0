"""Evaluation harness: dataset loaders (our JSONL sets, XQuAD, XQuAD-R) and pure retrieval/answer metrics."""
