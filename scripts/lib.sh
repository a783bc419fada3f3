# Shared by scripts/demo and scripts/test: install missing Debian packages, configure and build.

# need_packages PKG...: installs those not yet installed (apt-get, as root or through sudo).
need_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

BUILD_PACKAGES=(cmake ninja-build g++ libeigen3-dev nlohmann-json3-dev libcpp-httplib-dev pkg-config)

# jobs: parallel build jobs that fit in memory (about 1.5 GiB per Eigen-heavy compile).
jobs() {
  local cores mem_jobs
  cores=$(nproc)
  mem_jobs=$(awk '/MemAvailable/ {print int($2 / 1500000)}' /proc/meminfo)
  [ "$mem_jobs" -lt 1 ] && mem_jobs=1
  echo $(( cores < mem_jobs ? cores : mem_jobs ))
}
