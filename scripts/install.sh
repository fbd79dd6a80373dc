#!/bin/sh
# The one install step, shared by the Makefile (editable, with the test extra) and the
# Dockerfile (the package alone):   install.sh PIP TARGET...
#   make:    scripts/install.sh .venv/bin/pip -e '.[test]'
#   docker:  scripts/install.sh pip .
set -eu
pip="$1"
shift
exec "$pip" install --quiet --disable-pip-version-check "$@"
