#!/bin/bash
# Executed at every boot, before the programs start; a failure is logged and the boot goes on.
set -euo pipefail
free=$(df -Pk "${WORKSPACE}" | awk 'NR==2 {print int($4/1024/1024)}')
echo "free space in ${WORKSPACE}: ${free} GiB"
if [ "${free}" -lt 20 ]; then echo "WARNING: less than 20 GiB free for the model cache"; fi
