#!/bin/sh
# Creates the unprivileged code user that every program runs as, and the init.
#
# Each sandbox runs its code under a host uid of its own (the worker picks it;
# the launcher's --uid). The image cannot know it, so /etc/passwd and /etc/group
# are symlinks into /run/isol8, a tmpfs where the launcher writes them at start
# with the code user named `sandbox` (the image's own copies, with `sandbox` as
# uid 1000, are what builds and prebuilt images see). The launcher runs as root
# and the exec-fallback keep-alive as nobody (65534), so the code never shares a
# uid with the process that tends it. tini is the containers' init (PID 1): no
# init binary is mounted from the host.
set -eu
command -v tini >/dev/null
groupadd --gid 1000 sandbox
useradd --uid 1000 --gid 1000 --home-dir /sandbox --no-create-home --shell /bin/bash sandbox
mkdir -p /sandbox /opt/isol8 /run/isol8
chown 1000:1000 /sandbox
for name in passwd group; do
  cp "/etc/$name" "/run/isol8/$name"
  mv "/etc/$name" "/etc/$name.base"
  ln -s "/run/isol8/$name" "/etc/$name"
done
