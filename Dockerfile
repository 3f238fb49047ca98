# The appliance image: vLLM's own image (the engine and its Python), plus supervisor, Caddy
# and the manager in a virtual environment of their own, installed by the same step the
# tests run into a temporary root (scripts/install.sh).
FROM vllm/vllm-openai:v0.11.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-venv for the appliance's own environment; openssh-server for PUBLIC_KEY logins; haproxy for the router's
# fast path. Ubuntu 22.04 (vLLM's base) has HAProxy 2.4, without json_query: HAProxy's own stable 2.8 packages
# for Ubuntu (their PPA) instead. An HAProxy older than 2.5 is reported at boot and the router then serves alone.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:vbernat/haproxy-2.8 \
 && apt-get install -y --no-install-recommends python3-venv openssh-server haproxy \
 && rm -rf /var/lib/apt/lists/*

# Ray for APPLIANCE_ROLE head/worker, in the engine's Python: 2.52 or later has token auth (the boot refuses an
# older one), and the extras bring the dashboard and the state API the Cluster page reads. Same pin as `make ray`.
RUN python3 -m pip install --no-cache-dir "ray[default,cgraph]==2.60.0"

COPY . /tmp/appliance-src
RUN /tmp/appliance-src/scripts/install.sh --root / \
 && rm -rf /tmp/appliance-src

ENV WORKSPACE=/workspace \
    PORTAL_CONFIG="localhost:1111:11111:/:Instance Portal|localhost:8000:18000:/docs:vLLM API|localhost:8001:8001:/:gRPC (vllm-bootstrap)"

WORKDIR /workspace
EXPOSE 1111 8000 8001

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/opt/appliance/.venv/bin/supervisorctl", "-c", "/etc/supervisor/supervisord.conf", "status", "caddy", "manager"]

ENTRYPOINT ["/opt/appliance/entrypoint.sh"]
