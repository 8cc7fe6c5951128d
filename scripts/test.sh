#!/usr/bin/env bash
# Installs everything the test suite needs and runs it. The README's test command.
#   bash scripts/test.sh              # the whole suite (what CI runs)
#   bash scripts/test.sh -m 'not slow' # the fast subset while iterating
# System packages come from Debian/Ubuntu (apt-get); Python packages into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  asterisk-core-sounds-en-wav asterisk-core-sounds-en  # real speech with published transcripts
  asterisk-core-sounds-en-g722                         # the same prompts as 16 kHz G.722 (wideband codec tests)
  sox                                                  # audio fixtures (μ-law WAV)
  baresip-core linphone-cli kamailio openssl           # independent SIP peers, a SIP proxy, TLS test certificates
  chromium                                             # real browser for the WebRTC softphone tests
  prometheus                                           # the real Prometheus scrapes /metrics; promtool checks docker/prometheus.yml
  espeak-ng                                            # synthetic test phrases (spoken card numbers for redaction)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

exec .venv/bin/python -m pytest "$@"
