# portico: a release build in a small runtime image (CA certificates, non-root, no shell).
#
#   docker build -t portico .
#   docker run -p 80:8080 -p 443:8443 -v $PWD/portico.toml:/etc/portico/portico.toml:ro \
#     -v portico-data:/var/lib/portico portico
#
# The image listens where the Kubernetes pod does (config/kubernetes/): its portico.toml
# says `http = "0.0.0.0:8080"`, `https = "0.0.0.0:8443"` and, for /metrics and the
# probes, `admin = "0.0.0.0:9901"`. Unprivileged ports need no capability; a request
# that came to port 80 is redirected to https on 443, the port the client knows.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Build settings the binary relies on (mimalloc commits memory as it is used).
COPY .cargo ./.cargo
COPY src ./src
RUN cargo build --release --locked --bin portico \
 && mkdir -p /out/var/lib/portico /out/etc/portico \
 && cp target/release/portico /out/portico

# distroless/cc: glibc, CA certificates, user nonroot (65532), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/portico /usr/local/bin/portico
COPY --from=build --chown=65532:65532 /out/var/lib/portico /var/lib/portico
COPY --from=build /out/etc/portico /etc/portico
USER 65532:65532
# Relative storage paths (the default "./portico-data") land in the writable volume. The
# Kubernetes backend writes nothing here (the pod's root filesystem is read-only).
WORKDIR /var/lib/portico
EXPOSE 8080 8443 9901
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["run", "--config", "/etc/portico/portico.toml"]
