# Multi-stage build: compile in the Rust image, run in a small distroless image
# as a non-root user.
#
#   docker build -t bedrock-proxy .
#   docker run -p 8080:8080 -p 9090:9090 -e PLATFORM_KEY_SHA256=... bedrock-proxy
#
# The default command serves config/bedrock.toml (real Bedrock, us-east-2); mount
# your own config over /etc/bedrock-proxy/bedrock.toml or pass --config.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bedrock-proxy --bin bedrock-sim

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/bedrock-proxy /src/target/release/bedrock-sim /usr/local/bin/
COPY config /etc/bedrock-proxy
USER nonroot
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/bedrock-proxy"]
# Inside a container the admin port must listen beyond loopback to be scraped.
# There /metrics and the probes stay open; /admin/* needs admin.token_sha256.
CMD ["--config", "/etc/bedrock-proxy/bedrock.toml", "--admin-listen", "0.0.0.0:9090"]
