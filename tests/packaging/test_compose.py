"""docker-compose.yml and the Dockerfile are safe by default (this machine cannot run Docker: their
structure is checked instead, and the image's install step is the wheel ``test_wheel`` builds)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TASKMAN_SERVICES = ("worker-code", "worker-http", "beat", "api")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_redis_has_a_password_and_no_published_port():
    redis = compose()["services"]["redis"]
    assert "ports" not in redis, "Redis access is full control of taskman: never publish it"
    command = " ".join(redis["command"])
    assert "requirepass" in command and "| exec redis-server -" in command, "the password comes on stdin"
    assert "--requirepass" not in command, "a password on redis-server's command line shows in ps"
    assert redis["environment"]["TASKMAN_REDIS_PASSWORD"].startswith("${TASKMAN_REDIS_PASSWORD:?"), \
        "compose refuses to start without a password"
    assert "noeviction" in command and "--appendonly yes" in command


def test_every_taskman_service_uses_the_password_and_the_image():
    services = compose()["services"]
    for name in TASKMAN_SERVICES:
        service = services[name]
        assert service["build"] == ".", name
        url = service["environment"]["TASKMAN_REDIS_URL"]
        assert url.startswith("redis://:${TASKMAN_REDIS_PASSWORD:?") and url.endswith("@redis:6379/0"), (name, url)
        assert service["command"][0] == "taskman", name
    published = [port for name in services for port in services[name].get("ports", [])]
    assert published == ["127.0.0.1:8000:8000"], "only the API, and only on the host's loopback"


def test_the_image_installs_the_package_and_never_runs_as_root():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    assert any(line.startswith("RUN pip install --no-cache-dir .") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the workers' containers do not run as root"
    assert not any("TASKMAN_REDIS_URL=" in line for line in lines), "no Redis address baked into the image"
