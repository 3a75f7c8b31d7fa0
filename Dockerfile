FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY services ./services
# The public package users import in their own workloads (from jobrunner import workload).
COPY jobrunner ./jobrunner
RUN pip install --no-cache-dir . \
    && useradd --create-home jobrunner
USER jobrunner
# Each compose service names its own command (python -m api / python -m worker --pool …).
CMD ["python", "-m", "api"]
