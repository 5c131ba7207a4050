# portico: a release build in a small runtime image (CA certificates, non-root, no shell).
#
#   docker build -t portico .
#   docker run -p 80:80 -p 443:443 -v $PWD/portico.toml:/etc/portico/portico.toml:ro \
#     -v portico-data:/var/lib/portico portico

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
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
# Relative storage paths (the default "./portico-data") land in the writable volume.
WORKDIR /var/lib/portico
EXPOSE 80 443
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["run", "--config", "/etc/portico/portico.toml"]
