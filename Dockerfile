# The isol8 service image (web, worker and beat all run from it; see docker-compose.yml).
# The sandbox images are separate: `python manage.py build_images` builds them on
# the Docker engine the worker talks to.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 ISOL8_DATA_DIR=/data
RUN apt-get update \
 && apt-get install -y --no-install-recommends debootstrap \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# The admin's styles, served by WhiteNoise; a throw-away key so no secret is baked in.
RUN DJANGO_SECRET_KEY=collectstatic-only ISOL8_DATA_DIR=/tmp/build python manage.py collectstatic --noinput -v 0
RUN useradd --system --uid 999 isol8 && mkdir -p /data && chown isol8 /data
EXPOSE 3000
# The web tier as `serve` runs it (isol8_site/web.py: bounded request heads).
CMD ["sh", "-c", "python manage.py migrate --noinput && python -m uvicorn isol8_site.asgi:application --host 0.0.0.0 --port 3000 --workers ${WEB_WORKERS:-2} --http isol8_site.http:BoundedHttpToolsProtocol --no-access-log --timeout-graceful-shutdown 5 --timeout-keep-alive 5"]
