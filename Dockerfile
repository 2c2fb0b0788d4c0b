# The isol8 service image (web, worker and beat all run from it; see docker-compose.yml).
# It starts FROM the same base-image setting as the sandbox images (ISOL8_BASE_IMAGE,
# default isol8-base:bookworm, which `python manage.py build_images` makes with
# debootstrap when there is no registry), so it builds on a machine without one:
#   docker build --build-arg ISOL8_BASE_IMAGE=isol8-base:bookworm -t isol8-service .
# Python is Debian's (bookworm: 3.11); the dependencies come from PyPI into /opt/venv.
# The sandbox images are separate: `python manage.py build_images` builds them on
# the Docker engine the worker talks to.
ARG ISOL8_BASE_IMAGE=isol8-base:bookworm
FROM ${ISOL8_BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 ISOL8_DATA_DIR=/data DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates debootstrap \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# Local CAs (deploy/ca/, filled by scripts/build-service-image.sh; empty is fine).
COPY deploy/ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
WORKDIR /app
COPY requirements.txt .
RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip install --no-cache-dir -r requirements.txt
COPY . .
# The admin's styles, served by WhiteNoise; a throw-away key so no secret is baked in.
RUN DJANGO_SECRET_KEY=collectstatic-only ISOL8_DATA_DIR=/tmp/build python manage.py collectstatic --noinput -v 0
RUN useradd --system --uid 999 isol8 && mkdir -p /data && chown isol8 /data
EXPOSE 3000
# The web tier as `serve` runs it (isol8_site/web.py: bounded request heads).
CMD ["sh", "-c", "python manage.py migrate --noinput && python -m uvicorn isol8_site.asgi:application --host 0.0.0.0 --port 3000 --workers ${WEB_WORKERS:-2} --http isol8_site.http:BoundedHttpToolsProtocol --no-access-log --timeout-graceful-shutdown 5 --timeout-keep-alive 5"]
