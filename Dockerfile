# Lifeboat's two images, from this one Dockerfile:
#   podman build --target agent -t lifeboat-agent .        `lifeboat`, injected into app pods (the default)
#   podman build --target operator -t lifeboat-operator .  `lifeboat-operator`, the kopf operator and webhook
# The agent runs in every injected pod, so its image holds only the agent, its storage SDKs and their
# dependencies; kopf and the kubernetes client live in the operator's. Both are FROM scratch: the
# interpreter, the libraries it links, sh and cat, copied out of Debian by scripts/image-rootfs.sh.
# Both run as uid 65532 and need nothing writable but the volumes they are given.
FROM docker.io/library/debian:bookworm-slim AS build

# Unpinned on purpose: bookworm's point releases replace versions, and a pin would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates binutils \
 && rm -rf /var/lib/apt/lists/*

# Made outside the source tree: `python3 -m` puts the working directory first on sys.path, where
# the project's operator/ folder would shadow the standard library's operator module.
RUN python3 -m venv /opt/lifeboat
COPY scripts/image-rootfs.sh /usr/local/bin/image-rootfs
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent/ agent/
COPY operator/ operator/

# The agent's own trimming: botocore carries API models for every AWS service (28 MB); the agent
# calls S3, and credentials may come from STS (web identity, assume role) or SSO. numpy's C headers,
# static libraries and f2py are for building against numpy, _simd for its tests. Third-party modules
# ship as bytecode alone (see scripts/image-rootfs.sh). The operator's and the kubectl plugin's
# scripts need the kubernetes client, which the agent image leaves out.
FROM build AS agent-build
RUN /opt/lifeboat/bin/pip install --no-cache-dir '.[s3,gcs,abs,sftp,nats]' \
 && site=$(echo /opt/lifeboat/lib/python3*/site-packages) \
 && find "$site/botocore/data" -mindepth 1 -maxdepth 1 -type d \
      ! -name s3 ! -name sts ! -name sso ! -name sso-oidc ! -name signin -exec rm -rf {} + \
 && rm -rf "$site/numpy/_core/include" "$site/numpy/_core/lib" "$site/numpy/f2py" "$site/numpy/_pyinstaller" \
      "$site"/numpy/_core/_simd.* \
 && rm /opt/lifeboat/bin/kubectl-lifeboat /opt/lifeboat/bin/lifeboat-operator* \
 && image-rootfs --sourceless /rootfs /opt/lifeboat

FROM build AS operator-build
RUN /opt/lifeboat/bin/pip install --no-cache-dir '.[operator]' \
 && image-rootfs /rootfs /opt/lifeboat


FROM scratch AS operator
COPY --from=operator-build /rootfs /
COPY --from=operator-build /opt/lifeboat /opt/lifeboat
ENV PATH=/opt/lifeboat/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["lifeboat-operator"]


# Last, so that a build without --target makes the agent.
FROM scratch AS agent
COPY --from=agent-build /rootfs /
COPY --from=agent-build /opt/lifeboat /opt/lifeboat
ENV PATH=/opt/lifeboat/bin:/usr/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["lifeboat"]
CMD ["--help"]
