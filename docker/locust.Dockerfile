# syntax=docker/dockerfile:1
# Locust master/worker image running loadtest/locustfile.py (HTTP and gRPC users via tritonclient).
# Build context: the repository root.

FROM python:3.11-slim-bookworm

ARG LOCUST_VERSION=2.47.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/bertqa/bin:${PATH} \
    BERTQA_DATA_DIR=/opt/bertqa/data

# Client-side needs only: the project's serving extras (pytriton, onnxruntime) stay out.
RUN pip install \
        "locust==${LOCUST_VERSION}" \
        "tritonclient[all]>=2.51" \
        "numpy>=1.24,<2" \
        "tokenizers>=0.20,<0.23"

COPY . /tmp/src
RUN pip install --no-deps /tmp/src \
    && mkdir -p /opt/bertqa \
    && cp -r /tmp/src/loadtest /opt/bertqa/loadtest \
    && rm -rf /tmp/src

COPY --chmod=755 docker/locust/entrypoint.sh /opt/bertqa/bin/bertqa-locust

# Locust needs no privileges.
RUN useradd --create-home --uid 1000 locust
USER locust
WORKDIR /home/locust
EXPOSE 8089 5557

ENTRYPOINT ["bertqa-locust"]
CMD ["--master"]
