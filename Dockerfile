FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md requirements.lock ./
COPY api ./api
COPY worker ./worker
COPY services ./services
# The public package users import in their own workloads (from jobrunner import workload).
COPY jobrunner ./jobrunner
# The versions the tests ran with, as `make install` installs them (docs/dependencies.md).
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --create-home jobrunner
USER jobrunner
# Each compose service names its own command (python -m api / python -m worker --pool …).
CMD ["python", "-m", "api"]
