FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md worker.py beat.py ./
COPY core ./core
COPY tui ./tui
COPY api ./api
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin taskman
# Never root: a code run's jail then keeps the worker's own unprivileged uid.
USER taskman
CMD ["taskman", "worker"]
