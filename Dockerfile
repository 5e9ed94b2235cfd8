# syntax=docker/dockerfile:1
# The trendflow binary: build with the full toolchain, run on a small Debian image as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin trendflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/trendflow trendflow
COPY --from=build /src/target/release/trendflow /usr/local/bin/trendflow
COPY sql /app/sql
WORKDIR /app
USER trendflow
ENV TRENDFLOW_SQL=/app/sql TRENDFLOW_STATE=/var/lib/trendflow/state
EXPOSE 50051 8080 8081
ENTRYPOINT ["trendflow"]
CMD ["--help"]
