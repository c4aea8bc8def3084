# mediabot: the Discord bot with its model baked in. Built by `docker compose build`.
# The install is scripts/setup.sh, the same script the tests and CI run.
FROM python:3.11-slim

# torch==2.13.0 from the default index is a CUDA build (several GB, runs on CPU too).
# For a small CPU-only image, point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index
# and set TORCH_SPEC to its CPU build (see the README).
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_EXTRA_INDEX_URL=
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    TORCH_SPEC=${TORCH_SPEC} \
    MODEL_CACHE_DIR=/app/models \
    REDIS_DATA_DIR=/app/data/redis

RUN useradd --create-home --uid 10001 mediabot \
    && mkdir -p /app/models /app/data \
    && chown -R mediabot:mediabot /app
WORKDIR /app
USER mediabot

COPY --chown=mediabot:mediabot pyproject.toml README.md ./
COPY --chown=mediabot:mediabot scripts ./scripts
COPY --chown=mediabot:mediabot bot ./bot
COPY --chown=mediabot:mediabot memory ./memory
COPY --chown=mediabot:mediabot prompts ./prompts
COPY --chown=mediabot:mediabot bench ./bench
# The default media catalog (seeded into Redis on first start; masked by moderation).
COPY --chown=mediabot:mediabot data/catalog ./data/catalog
RUN scripts/setup.sh

# Convert the embedded model now, so a container starts in seconds.
RUN .venv/bin/python -m bot prepare-model

CMD [".venv/bin/python", "-m", "bot", "run"]
