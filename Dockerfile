# Multi-stage build: compile with the Rust toolchain, ship a small non-root runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin gatehouse \
 && mkdir -p /state/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
COPY gateway.yaml /etc/gatehouse/gateway.yaml
COPY --from=build --chown=65532:65532 /state /var/lib/gatehouse
# Inside a container the admin listener must be reachable by the orchestrator's probes.
ENV GATEHOUSE_CONFIG=/etc/gatehouse/gateway.yaml \
    GATEHOUSE_ADMIN_LISTEN=0.0.0.0:9090
WORKDIR /var/lib/gatehouse
USER nonroot:nonroot
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["serve"]
