# syntax=docker/dockerfile:1
# The otel-kepler agent image: Debian 12 with bcc (python3-bpfcc) so that privilege high's ebpf
# receiver can compile and load its program; the same image runs privilege low and sidecars.
#   docker build -t otel-kepler:0.1.0 .          (make image)
# At run time bcc needs the host's kernel headers: the chart mounts /lib/modules and /usr/src
# (or the kernel provides /sys/kernel/kheaders.tar.xz).

ARG DEBIAN=debian:12-slim

# ---- build the wheel (the same one scripts/check-wheel.sh proves installs and starts)
FROM ${DEBIAN} AS wheel
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY otel_kepler/ otel_kepler/
COPY receivers/ receivers/
COPY processors/ processors/
COPY exporters/ exporters/
RUN python3 -m venv /build && /build/bin/pip install --no-cache-dir --upgrade pip \
 && /build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- the agent: the wheel and its dependencies at the versions pinned in
# requirements/constraints.txt (scripts/pin-constraints.sh writes it; make constraints)
FROM ${DEBIAN}
# python3-bpfcc is bcc's Python binding for Debian's Python 3.11; the agent's virtual environment
# sees it through --system-site-packages. ipmitool is not needed (pyghmi speaks IPMI itself).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-bpfcc ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /dist/ /tmp/dist/
COPY requirements/constraints.txt /tmp/dist/
RUN python3 -m venv --system-site-packages /opt/otel-kepler \
 && /opt/otel-kepler/bin/pip install --no-cache-dir --disable-pip-version-check --upgrade pip \
 && /opt/otel-kepler/bin/pip install --no-cache-dir --disable-pip-version-check \
      --constraint /tmp/dist/constraints.txt /tmp/dist/otel_kepler-*.whl \
 && rm -rf /tmp/dist \
 && ln -s /opt/otel-kepler/bin/otel-kepler /usr/local/bin/otel-kepler \
 && /opt/otel-kepler/bin/python -c "import bcc, otel_kepler" \
 && groupadd --gid 1000 kepler && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin kepler \
 && mkdir -p /etc/otel-kepler
COPY configs/ /usr/share/otel-kepler/configs/
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# privilege low and sidecars run as 1000 (the chart sets it); privilege high runs as root.
USER 1000:1000
EXPOSE 9102
ENTRYPOINT ["otel-kepler"]
CMD ["run", "--config", "/etc/otel-kepler/config.yaml"]
