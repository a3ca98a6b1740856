#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this). Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
# In CI (CI=true, as root) the `ray submit` test needs an sshd and rsync; install them if missing.
# Elsewhere nothing is installed system-wide and that test skips with the reason.
if [[ "${CI:-}" == "true" && "$(id -u)" == "0" ]] && ! { [[ -x /usr/sbin/sshd ]] && command -v rsync >/dev/null; }; then
  (export DEBIAN_FRONTEND=noninteractive; timeout 300 apt-get install -y -q openssh-server rsync >/dev/null 2>&1 \
    || { timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 300 apt-get install -y -q openssh-server rsync >/dev/null 2>&1; }) \
    || echo "[test] could not install openssh-server/rsync; the ray submit test will skip" >&2
fi
# Likewise the MLflow browser test needs Debian's chromium and its WebDriver (it skips, saying so, without them).
if [[ "${CI:-}" == "true" && "$(id -u)" == "0" ]] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  (export DEBIAN_FRONTEND=noninteractive; timeout 600 apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 600 apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }) \
    || echo "[test] could not install chromium/chromium-driver; the MLflow browser test will skip" >&2
fi
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$root/.venv/bin/python" -m pytest -q "$@"
