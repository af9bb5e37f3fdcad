#!/usr/bin/env bash
# scripts/install.sh — build offload and install it as a systemd service:
# /usr/local/bin/offload, /etc/offload/offload.conf (kept if present), the unit, and an
# "offload" system user. Run as root from a checkout: sudo scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
go build -trimpath -o /usr/local/bin/offload .
id offload >/dev/null 2>&1 || useradd --system --home-dir /var/cache/offload --shell /usr/sbin/nologin offload
install -d -m 0755 /etc/offload
[ -f /etc/offload/offload.conf ] || install -m 0644 scripts/offload.conf /etc/offload/offload.conf
install -m 0644 scripts/offload.service /etc/systemd/system/offload.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "installed; edit /etc/offload/offload.conf (base = ...), then: systemctl enable --now offload"
else
  echo "installed /usr/local/bin/offload and /etc/offload/offload.conf (no systemd running here)"
fi
