#!/bin/sh
# Bake a role group's salt states into an image, masterless: `salt-call --local state.highstate`
# with the group's roles as pillar and grains, so the tree's top.sls picks the states by role,
# and `image_bake: true`, so the states install what is the same on every host and start nothing
# (salt/lib/site.jinja). The pillar holds no host, address or secret: the server's first highstate
# brings those. Run by packer/coop.pkr.hcl on the build instance (as root) or in the lab's build
# container (source docker.lab), and by the tests on this machine (tests/configuration/test_bake_states.py:
# every image group of the role catalogue, salt/roles.yaml, against the real salt/).
#
# Salt comes from PyPI into a venv at /opt/salt, pinned with its whole dependency closure
# (packer/salt-requirements.txt, generated from uv.lock), the same way on the cloud and in the
# lab; its commands are linked into /usr/local/bin. The states ship the salt-minion,
# salt-master and salt-api systemd units (salt/salt/minion.sls, master.sls), in bake mode too.
#
#   SALT_TREE          the state tree (a copy of the repo's salt/), required
#   IMAGE_ROLES        the group's roles, comma-separated, required
#   IMAGE_GROUP        the group's name (the bake's minion id is image-<group>)
#   SALT_CALL          the salt-call to use (default: salt-call, installed when missing)
#   SALT_VERSION       the salt version the installed salt-call must report
#   SALT_REQUIREMENTS  the pinned requirements salt is installed from when salt-call is missing
#   SALT_BUILD_REQUIREMENTS  what its sdists are built with (from PyPI: installed first)
#   SALT_WHEELHOUSE    a folder with a wheel for each of them: install offline from it
#                      (`--no-index --find-links`; a lab build, whose HTTPS is intercepted);
#                      empty: from PyPI (salt and timelib are sdists: gcc and python3-dev are
#                      installed for the build and removed after)
#   BAKE_CA_BUNDLE     a CA bundle the bake's downloads trust (pip, npm, git, curl): a lab build's,
#                      whose HTTPS is intercepted; it is not copied into the image
#   IMAGE_CLEANUP      1: a real image build: package lists refreshed first, no package starts
#                      its service during the bake (policy-rc.d), and no minion identity, pip
#                      cache or package list is left (each server makes its own key)
#   SALT_ARGS          what salt-call runs (default: state.highstate; the tests: state.show_highstate,
#                      or state.highstate test=True)
set -eu

: "${SALT_TREE:?SALT_TREE must name the salt state tree}"
: "${IMAGE_ROLES:?IMAGE_ROLES must list the roles to bake}"
IMAGE_GROUP=${IMAGE_GROUP:-image}
SALT_CALL=${SALT_CALL:-salt-call}
SALT_VERSION=${SALT_VERSION:-3008.4}
SALT_VENV=/opt/salt
SALT_ARGS=${SALT_ARGS:-state.highstate}

say() { printf 'bake: %s\n' "$*"; }

if [ -n "${BAKE_CA_BUNDLE:-}" ]; then
  export SSL_CERT_FILE="$BAKE_CA_BUNDLE" CURL_CA_BUNDLE="$BAKE_CA_BUNDLE" GIT_SSL_CAINFO="$BAKE_CA_BUNDLE"
  export PIP_CERT="$BAKE_CA_BUNDLE" REQUESTS_CA_BUNDLE="$BAKE_CA_BUNDLE"
  export NODE_EXTRA_CA_CERTS="$BAKE_CA_BUNDLE" npm_config_cafile="$BAKE_CA_BUNDLE"
fi

install_salt() {
  : "${SALT_REQUIREMENTS:?SALT_REQUIREMENTS must name salt-requirements.txt (salt-call is missing)}"
  say "installing salt $SALT_VERSION into $SALT_VENV from ${SALT_WHEELHOUSE:-PyPI}"
  export DEBIAN_FRONTEND=noninteractive
  build_deps=""
  if [ -z "${SALT_WHEELHOUSE:-}" ]; then
    for package in gcc python3-dev; do
      dpkg -s "$package" >/dev/null 2>&1 || build_deps="$build_deps $package"
    done
  fi
  # shellcheck disable=SC2086 # build_deps is words
  apt-get install -y -q python3-venv ca-certificates $build_deps
  python3 -m venv "$SALT_VENV"
  if [ -n "${SALT_WHEELHOUSE:-}" ]; then
    # The wheelhouse was built from PyPI's files checked against these same hashes (pip wheel
    # in hash-checking mode); salt and timelib are sdists, so their wheels were built there and
    # hash differently: installed from it by name and version only.
    sed -E 's/ --hash=[^ ]+//g' "$SALT_REQUIREMENTS" > /tmp/salt-requirements.wheelhouse.txt
    "$SALT_VENV/bin/pip" install -q --no-cache-dir --no-index --find-links "$SALT_WHEELHOUSE" \
      -r /tmp/salt-requirements.wheelhouse.txt
    rm -f /tmp/salt-requirements.wheelhouse.txt
  else
    # salt and timelib are sdists: built with their build requirements installed first (hashes
    # checked) and no build isolation, which would download those unchecked.
    : "${SALT_BUILD_REQUIREMENTS:?SALT_BUILD_REQUIREMENTS must name salt-build-requirements.txt}"
    "$SALT_VENV/bin/pip" install -q --no-cache-dir --require-hashes -r "$SALT_BUILD_REQUIREMENTS"
    "$SALT_VENV/bin/pip" install -q --no-cache-dir --require-hashes --no-build-isolation \
      -r "$SALT_REQUIREMENTS"
  fi
  if [ -n "$build_deps" ]; then
    # shellcheck disable=SC2086
    apt-get purge -y -q --autoremove $build_deps
  fi
  for command in salt salt-call salt-minion salt-master salt-api salt-key salt-run; do
    ln -sf "$SALT_VENV/bin/$command" "/usr/local/bin/$command"
  done
  installed=$("$SALT_VENV/bin/salt-call" --version)
  case "$installed" in
    "salt-call $SALT_VERSION"*) say "installed $installed" ;;
    *) say "installed '$installed', not salt $SALT_VERSION"; exit 1 ;;
  esac
}

if [ "${IMAGE_CLEANUP:-0}" = 1 ]; then
  # The states install packages with refresh: False: the lists are refreshed once, here.
  DEBIAN_FRONTEND=noninteractive apt-get update -q
fi
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
PILLAR

say "applying the states of $IMAGE_ROLES from $SALT_TREE"
# shellcheck disable=SC2086 # SALT_ARGS is words
"$SALT_CALL" --local --config-dir="$work" --retcode-passthrough --state-output=terse $SALT_ARGS

if [ "${IMAGE_CLEANUP:-0}" = 1 ]; then
  say "removing the minion identity and caches from the image"
  rm -f /etc/salt/minion_id /etc/salt/pki/minion/minion.pem /etc/salt/pki/minion/minion.pub
  rm -rf /var/cache/salt/minion "$SALT_TREE" /root/.cache/pip
  if [ -n "${SALT_REQUIREMENTS:-}" ]; then rm -f "$SALT_REQUIREMENTS"; fi
  if [ -n "${SALT_BUILD_REQUIREMENTS:-}" ]; then rm -f "$SALT_BUILD_REQUIREMENTS"; fi
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  cloud-init clean --logs 2>/dev/null || true
fi
say "done"
