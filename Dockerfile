# Lifeboat: one image, two entry points — `lifeboat` (the agent, injected into app pods) and
# `lifeboat-operator` (the kopf operator and admission webhook). Runs as uid 65532, read-only root.
FROM docker.io/library/debian:bookworm-slim AS build

# Unpinned on purpose: bookworm's point releases replace versions, and a pin would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Made outside the source tree: `python3 -m` puts the working directory first on sys.path, where
# the project's operator/ folder would shadow the standard library's operator module.
RUN python3 -m venv /opt/lifeboat
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent/ agent/
COPY operator/ operator/
# pip and setuptools are only needed to install: the runtime image goes without them.
RUN /opt/lifeboat/bin/pip install --no-cache-dir '.[all]' \
 && /opt/lifeboat/bin/pip uninstall --yes pip setuptools


FROM docker.io/library/debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 lifeboat \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin lifeboat

COPY --from=build /opt/lifeboat /opt/lifeboat
ENV PATH=/opt/lifeboat/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 65532:65532
ENTRYPOINT ["lifeboat"]
CMD ["--help"]
