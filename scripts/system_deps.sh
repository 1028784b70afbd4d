#!/usr/bin/env bash
# System packages the project needs beyond PyPI: fonts with Indic scripts (Noto Sans Devanagari,
# Bengali, Tamil, Telugu...) so the emergency alert cards shape Hindi and other scripts correctly.
# Idempotent; needs root (or sudo) and Debian's package registry. Skips quietly when fonts exist.
set -euo pipefail
if fc-list 2>/dev/null | grep -qi "NotoSansDevanagari" || ls /usr/share/fonts/truetype/noto/NotoSansDevanagari-Regular.ttf >/dev/null 2>&1; then
  exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fonts-noto-core >/dev/null
  echo "installed fonts-noto-core"
else
  echo "warning: no apt-get; install Noto Sans Devanagari/Bengali/Tamil/Telugu fonts by hand" >&2
fi
