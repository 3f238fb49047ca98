#!/bin/bash
# The smallest useful provisioning script: fail loudly, leave a trace in the workspace.
# Set PROVISIONING_SCRIPT to this file's raw URL (or its path in the container).
set -euo pipefail

echo "provisioning in ${WORKSPACE} (model cache: ${HF_HOME})"
mkdir -p "${WORKSPACE}/provisioned"
date -u +%FT%TZ >> "${WORKSPACE}/provisioned/hello.runs"
echo "hello from the provisioning script"
