#!/bin/sh
# Creates the unprivileged code user (uid/gid 1000, home /sandbox) that every
# program runs as. The launcher runs as root and the exec-fallback keep-alive as
# nobody (65534), so the code never shares a uid with the process that tends it.
set -eu
groupadd --gid 1000 sandbox
useradd --uid 1000 --gid 1000 --home-dir /sandbox --no-create-home --shell /bin/bash sandbox
mkdir -p /sandbox /opt/isol8
chown 1000:1000 /sandbox
