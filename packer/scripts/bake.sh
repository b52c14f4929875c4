#!/bin/sh
# Bake a role group's salt states into an image, masterless: `salt-call --local state.highstate`
# with the group's roles as pillar and grains, so the tree's top.sls picks the states by role,
# and `image_bake: true`, so the states install what is the same on every host and start nothing
# (salt/lib/site.jinja). The pillar holds no host, site or secret: the server's first highstate
# brings those. Run by packer/coop.pkr.hcl on the build instance (as root), and by the tests on
# this machine (tests/test_bake_states.py: every group of images.json against the real salt/).
#
#   SALT_TREE      the state tree (a copy of the repo's salt/), required
#   IMAGE_ROLES    the group's roles, comma-separated, required
#   IMAGE_GROUP    the group's name (the bake's minion id is image-<group>)
#   SALT_CALL      the salt-call to use (default: salt-call, installed when missing)
#   SALT_VERSION   the salt version to install when salt-call is missing
#   IMAGE_CLEANUP  1: a real image build: no package starts its service during the bake
#                  (policy-rc.d), and no minion identity is left (each server makes its own key)
#   IMAGE_ROOT     the prefix of every path the states write (pillar site:root; default "": /)
#   SALT_ARGS      what salt-call runs (default: state.highstate; the tests: state.show_highstate,
#                  or state.highstate test=True)
set -eu

: "${SALT_TREE:?SALT_TREE must name the salt state tree}"
: "${IMAGE_ROLES:?IMAGE_ROLES must list the roles to bake}"
IMAGE_GROUP=${IMAGE_GROUP:-image}
SALT_CALL=${SALT_CALL:-salt-call}
SALT_VERSION=${SALT_VERSION:-3008.4}
IMAGE_ROOT=${IMAGE_ROOT:-}
SALT_ARGS=${SALT_ARGS:-state.highstate}

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
cleanup() {
  rm -rf "$work"
  if [ -n "${policy_rc:-}" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
if [ "${IMAGE_CLEANUP:-0}" = 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
  # Packages (jenkins, postgresql, nginx, ...) start their services when installed: not in an image.
  policy_rc=1
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
fi
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
site:
  kind: image
  root: "$IMAGE_ROOT"
PILLAR

say "applying the states of $IMAGE_ROLES from $SALT_TREE"
# shellcheck disable=SC2086 # SALT_ARGS is words
"$SALT_CALL" --local --config-dir="$work" --retcode-passthrough --state-output=terse $SALT_ARGS

if [ "${IMAGE_CLEANUP:-0}" = 1 ]; then
  say "removing the minion identity and caches from the image"
  rm -f /etc/salt/minion_id /etc/salt/pki/minion/minion.pem /etc/salt/pki/minion/minion.pub
  rm -rf /var/cache/salt/minion "$SALT_TREE"
  apt-get clean
  cloud-init clean --logs 2>/dev/null || true
fi
say "done"
