"""The appliance's own sshd for PUBLIC_KEY: host key, authorized_keys, sshd_config and its program."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from app import render, validation
from app.provisioning.output import log
from app.settings import Settings

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def public_keys(text: str) -> list[str]:
    """PUBLIC_KEY as authorized_keys lines; no options (command=, from=...), only known key types."""
    keys = []
    for line in text.replace("\\n", "\n").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if parts[0] not in KEY_TYPES or len(parts) < 2 or not re.fullmatch(r"[A-Za-z0-9+/]+={0,3}", parts[1]):
            raise ValueError(f"PUBLIC_KEY: {line[:40]!r}... is not an SSH public key (type base64 [comment])")
        validation.plain_text(line, "PUBLIC_KEY")
        keys.append(line)
    if not keys:
        raise ValueError("PUBLIC_KEY holds no key")
    return keys


def port_listening(port: int) -> bool:
    """Whether something listens on TCP `port` here (the platform's sshd, on Vast's SSH launch modes or RunPod)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def ssh_setup(settings: Settings, keys: list[str]) -> Path:
    """Host key (generated once, kept in the workspace), authorized_keys (PUBLIC_KEY only, rewritten at every boot)
    and sshd_config; returns the config."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    folder = settings.ssh_dir
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    host_key = folder / "ssh_host_ed25519_key"
    if not host_key.exists():
        key = Ed25519PrivateKey.generate()
        render.write_atomic(host_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                        serialization.NoEncryption()).decode(), mode=0o600)
        render.write_atomic(folder / "ssh_host_ed25519_key.pub", key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " appliance-host\n")
        log(f"generated the SSH host key {host_key}")
    # authorized_keys is derived from PUBLIC_KEY at every boot: kept in the run folder (0700), not on the volume.
    authorized = settings.ssh_authorized_keys
    authorized.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    render.write_atomic(authorized, "\n".join(keys) + "\n", mode=0o600)
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder, fixed at its build
    except OSError as exc:
        log(f"WARNING: cannot create /run/sshd ({exc.strerror}): sshd may refuse to start")
    import pwd
    user = pwd.getpwuid(os.geteuid()).pw_name
    config = folder / "sshd_config"
    render.write_atomic(config, "\n".join([
        f"# {render.MARKER} from PUBLIC_KEY at every boot; do not edit",
        f"Port {settings.ssh_port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        # The appliance writes the keys itself (0600, in a 0700 folder). With StrictModes, sshd would refuse
        # them whenever a parent folder is group/world-writable (a 0777 /workspace, /tmp under `make run`).
        "StrictModes no",
        f"AllowUsers {user}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AllowTcpForwarding yes",
        "X11Forwarding no",
        "UsePAM no",
        f"PidFile {settings.run_dir / 'sshd.pid'}",
        "PrintMotd no",
        "",
    ]), mode=0o600)
    return config


def sshd_binary() -> str | None:
    return shutil.which("sshd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))


def ssh_program(settings: Settings) -> render.Program | None:
    if not settings.public_key:
        return None
    try:
        keys = public_keys(settings.public_key)
    except ValueError as exc:
        log(f"ERROR: {exc}; no sshd is started")
        return None
    if port_listening(settings.ssh_port):
        log(f"PUBLIC_KEY is set but port {settings.ssh_port} is already served (the platform's sshd): "
            "the appliance starts no sshd of its own")
        return None
    config = ssh_setup(settings, keys)
    sshd = sshd_binary()
    if not sshd:
        log("WARNING: PUBLIC_KEY is set but sshd is not installed (apt package openssh-server): no SSH access")
        return None
    return render.Program(name="sshd", argv=[sshd, "-D", "-e", "-f", str(config)], priority=150,
                          note="from PUBLIC_KEY")
