# flowpipe: docker build -t flowpipe . && docker run --rm flowpipe --help
# With optional extras, e.g. the Spark Connect client for `check --engine spark` (the image the
# Spark check of deploy/kubernetes/scaled-out/ runs): docker build --build-arg EXTRAS=[spark] .
# Build stage: compiles the C wire decoder (flowpipe/_wire.c) into a wheel.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG EXTRAS=
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".${EXTRAS}"

# Runtime: no compiler, a non-root user (uid 10001, as deploy/kubernetes/flowpipe.yaml expects).
FROM python:3.11-slim
ARG EXTRAS=
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "flowpipe${EXTRAS}" && rm -rf /wheels \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /data flowpipe \
    && mkdir -p /data && chown flowpipe:flowpipe /data
USER 10001
WORKDIR /data
ENV FLOWPIPE_STORE=/data/store
EXPOSE 9965 9966
ENTRYPOINT ["flowpipe"]
CMD ["--help"]
