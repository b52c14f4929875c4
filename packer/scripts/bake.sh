#!/bin/sh
# Bake a role group's salt states into an image, masterless: `salt-call --local state.highstate`
# with the group's roles as pillar and grains, so the tree's top.sls picks the states by role.
# Run by packer/coop.pkr.hcl on the build instance (as root), and by the tests on this machine.
#
#   SALT_TREE      the state tree (a copy of the repo's salt/), required
#   IMAGE_ROLES    the group's roles, comma-separated, required
#   IMAGE_GROUP    the group's name (the bake's minion id is image-<group>)
#   SALT_CALL      the salt-call to use (default: salt-call, installed when missing)
#   SALT_VERSION   the salt version to install when salt-call is missing
#   IMAGE_CLEANUP  1: leave no minion identity in the image (each server makes its own key)
set -eu

: "${SALT_TREE:?SALT_TREE must name the salt state tree}"
: "${IMAGE_ROLES:?IMAGE_ROLES must list the roles to bake}"
IMAGE_GROUP=${IMAGE_GROUP:-image}
SALT_CALL=${SALT_CALL:-salt-call}
SALT_VERSION=${SALT_VERSION:-3008.4}

say() { printf 'bake: %s\n' "$*"; }

install_salt() {
  # The Salt Project's Debian repository (onedir packages), pinned to SALT_VERSION.
  say "installing salt-minion $SALT_VERSION"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q curl ca-certificates
  mkdir -p /etc/apt/keyrings
  curl -fsSL https://packages.broadcom.com/artifactory/api/security/keypair/SaltProjectKey/public \
    -o /etc/apt/keyrings/salt-archive-keyring.pgp
  curl -fsSL https://github.com/saltstack/salt-install-guide/releases/latest/download/salt.sources \
    -o /etc/apt/sources.list.d/salt.sources
  printf 'Package: salt-*\nPin: version %s\nPin-Priority: 1001\n' "$SALT_VERSION" \
    > /etc/apt/preferences.d/salt-pin-1001
  apt-get update -q
  apt-get install -y -q salt-minion
  systemctl disable --now salt-minion 2>/dev/null || true
}

if ! command -v "$SALT_CALL" >/dev/null 2>&1; then
  install_salt
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pillar"
roles_yaml=$(printf '%s' "$IMAGE_ROLES" | tr ',' '\n' | sed 's/^/  - /')
cat > "$work/minion" <<CONF
id: image-$IMAGE_GROUP
file_client: local
root_dir: $work/root
file_roots:
  base:
    - $SALT_TREE
pillar_roots:
  base:
    - $work/pillar
grains:
  roles:
$roles_yaml
CONF
cat > "$work/pillar/top.sls" <<PILLAR
base:
  '*':
    - bake
PILLAR
cat > "$work/pillar/bake.sls" <<PILLAR
image_bake: true
image_group: $IMAGE_GROUP
roles:
$roles_yaml
PILLAR

say "applying the states of $IMAGE_ROLES from $SALT_TREE"
"$SALT_CALL" --local --config-dir="$work" --retcode-passthrough --state-output=terse state.highstate

if [ "${IMAGE_CLEANUP:-0}" = 1 ]; then
  say "removing the minion identity and caches from the image"
  rm -f /etc/salt/minion_id /etc/salt/pki/minion/minion.pem /etc/salt/pki/minion/minion.pub
  rm -rf /var/cache/salt/minion "$SALT_TREE"
  apt-get clean
  cloud-init clean --logs 2>/dev/null || true
fi
say "done"
