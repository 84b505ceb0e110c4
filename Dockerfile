FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md worker.py beat.py ./
COPY core ./core
COPY tui ./tui
RUN pip install --no-cache-dir .
ENV TASKMAN_REDIS_URL=redis://redis:6379/0
CMD ["taskman", "worker"]
