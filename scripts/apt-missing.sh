#!/bin/sh
# Installs the Debian packages named, where any are missing, with apt when we are root or
# sudo may run without a password:   apt-missing.sh required|optional WHAT PACKAGE...
#   required: cannot install them -> exit 1 (the caller needs them)
#   optional: cannot install them -> say so and exit 0 (the caller goes on without them)
# The caller names only the packages it found missing; none -> nothing is done.
set -u
need="$1"; what="$2"; shift 2
[ "$#" -gt 0 ] || exit 0
cannot() {
  echo "missing: $* ($what): install them" >&2
  [ "$need" = optional ]; exit $?
}
if [ "$(id -u)" = 0 ]; then SUDO=
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else cannot "$@"; fi
echo "installing $* (Debian packages, $what)"
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null \
  || cannot "$@"
