#!/bin/bash
# A Vast.ai-style provisioning script adapted to the appliance.
# pip and python here are the engine's (the appliance puts its bin folder first on PATH),
# so `pip install` reaches the environment `vllm serve` runs in.
set -eo pipefail

# Packages for the engine's environment (pinned, so a later boot gets the same).
PIP_PACKAGES=(${PIP_PACKAGES:-})
if [ "${#PIP_PACKAGES[@]}" -gt 0 ]; then
    pip install --no-cache-dir "${PIP_PACKAGES[@]}"
fi

# Files into the workspace (persists across restarts).
mkdir -p "${WORKSPACE}/data"
for url in ${DOWNLOAD_URLS:-}; do
    curl -fL --retry 5 --retry-delay 2 -o "${WORKSPACE}/data/$(basename "$url")" "$url"
done

# An extra service: prefer PROVISIONING_MANIFEST's `programs:`, which the appliance renders and logs.
echo "done: $(ls "${WORKSPACE}/data" | wc -l) file(s) in ${WORKSPACE}/data"
