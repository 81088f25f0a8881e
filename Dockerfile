# The llmfleet image: the operator (`llmfleet run`) and the simulated engine
# (`llmfleet sim`, what a ModelDeployment with engine.kind=sim runs) are one image.
#   docker build -t ghcr.io/llmfleet/llmfleet:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/llmfleet-*.whl

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# Non-root, and nothing written to the image at run time (the pods mount a read-only root).
USER 65532:65532
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8000 8080 8081
CMD ["llmfleet", "run"]
