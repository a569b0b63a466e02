#!/usr/bin/env bash
# The system tools some tests drive for real: promtool and prometheus (Debian `prometheus`),
# headless chromium (the dashboard screenshot). A no-op when they are present; installs them
# with apt where apt-get is there and we are root (CI: root on Debian); otherwise says what is
# missing, and those tests skip with that reason.
set -euo pipefail
need=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "test tools missing (${need[*]}): install them with apt as root; their tests will skip" >&2
fi
