"""Knowledge base: sources, parsing, chunking, embedders, Qdrant store, hybrid retrieval,
chat models, prompts, the answer pipeline and the evaluation harness."""
