"""Dense embedders behind one port (`rag.embedders.base.Embedder`)."""
