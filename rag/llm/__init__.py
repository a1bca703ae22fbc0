"""Chat models behind one port: Ollama, OpenAI-compatible servers, embedded llama.cpp."""
