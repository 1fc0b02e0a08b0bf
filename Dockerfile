# One image for every warren role; the command picks the role:
#   python -m manager --data-dir /data
#   python -m worker --name w1 --data-dir /data
#   python -m client upload FILE...
# docker-compose.yml builds it once per service (cached) and runs each role.
FROM python:3.11-slim

# PYTHONSAFEPATH: `python -m` must import the installed packages, never a folder of the
# same name in the working directory (the client runs in a bind-mounted host folder).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

COPY pyproject.toml README.md ./
COPY warren/ warren/
COPY manager/ manager/
COPY worker/ worker/
COPY client/ client/
COPY devtools/ devtools/
RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# A non-root user. uid 1000 is the usual first user of a Linux host, so files the client
# downloads into a bind-mounted folder belong to that user; pass `--user "$(id -u):$(id -g)"`
# to `docker compose run` otherwise. /data is where a service keeps its state, /etc/warren
# where docker compose's `provision` writes the users' secrets and configs: a named volume
# mounted there starts with this folder's owner, so the service can write to it.
RUN groupadd --gid 1000 warren \
    && useradd --uid 1000 --gid warren --create-home --shell /bin/sh warren \
    && mkdir /data /etc/warren \
    && chown warren:warren /data /etc/warren
USER warren

# Every service reads its state folder from here unless --data-dir says otherwise.
ENV WARREN_DATA_DIR=/data

CMD ["python", "-m", "manager"]
