# syntax=docker/dockerfile:1
# One image for every step and service: watcher, ingestion, trainer, selector, model server.
FROM python:3.11-slim AS build
# a C compiler and zlib's headers: the dataset package's C extension (setup.py)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1
COPY pyproject.toml setup.py README.md ./
COPY scripts/install.sh ./scripts/
COPY core ./core
COPY events ./events
COPY dataset ./dataset
COPY repository ./repository
COPY services ./services
COPY workflows ./workflows
COPY dashboard ./dashboard
COPY retrain ./retrain
# The same install step as the Makefile (scripts/install.sh), without the test extra.
# then the installed package's extension must load (-P: not the sources in /src)
RUN sh scripts/install.sh pip . \
    && python -P -c "import dataset.native as n, sys; sys.exit(not n.available())"

FROM python:3.11-slim
# git: the watcher's Git mode (retrain watch --git) fetches the dataset repository with it
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 retrain
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RETRAIN_HOME=/var/lib/retrain \
    RETRAIN_HOST=0.0.0.0
RUN mkdir -p /var/lib/retrain && chown retrain /var/lib/retrain
USER 10001
WORKDIR /home/retrain
EXPOSE 8080 8090
ENTRYPOINT ["retrain"]
CMD ["--help"]
