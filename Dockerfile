# The app image: web (gunicorn), Celery worker and beat, and the milvus-lite
# server all run from it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/app/var

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Byte-compile the project once: with PYTHONDONTWRITEBYTECODE set, every manage.py run would
# otherwise compile its modules again (about 0.3 s of each checkconsistency start-up).
RUN python -m compileall -q consistency project manage.py
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /app/var /data \
    && chown app:app /app/var /data
USER app

EXPOSE 8000 19530
CMD ["gunicorn", "project.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
