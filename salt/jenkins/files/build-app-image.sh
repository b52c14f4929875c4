#!/usr/bin/env bash
# Build one app at one commit with podman and push it, tagged with the commit's sha: the work of
# the `app-image` Jenkins job (jenkins/Jenkinsfile, which runs it as jenkins/build-app-image.sh, a
# link to this file), and of the `jenkins.build` salt state on a jenkins agent when no Jenkins is
# configured (salt://jenkins/files/build-app-image.sh). Runnable on any machine with git and podman.
#
# Environment (the job's parameters and its registry credential):
#   APP, REPO, SHA, BRANCH, IMAGE       the app, its git repo, the commit, its branch, and
#                                       registry-host/repository (no tag). REPO carries no
#                                       password: this host's deploy key or git credential
#                                       helper authenticates. Should one be in its userinfo
#                                       (scheme://user:token@host/...), it is never printed nor
#                                       put in the image's source label.
#   REGISTRY_USER, REGISTRY_PASSWORD    the registry's credentials (never printed); or
#   REGISTRY_AUTH_FILE                  instead: an auth file that holds them already (the agent's
#                                       own, written by the jenkins.agent salt state)
#   BASE_IMAGE                          optional: the image apps build FROM; pulled (with the
#                                       same credentials) when it is not in podman's storage
#   REGISTRY_TLS_VERIFY                 optional: false for a plain-HTTP registry (default true)
#   REGISTRY_CERT_DIR                   optional: a folder with the registry's CA (ca.crt); default:
#                                       podman's own, /etc/containers/certs.d/<registry>/ (the
#                                       jenkins.agent salt state puts it there)
#   BUILD_NETWORK                       optional: podman build --network (default: podman's own)
#   RUNTIME_IMAGES                      for a repository without a Dockerfile (the standard
#                                       build, standard_build.py beside this script, or at
#                                       STANDARD_BUILD): the runtimes' base images, space-separated
#                                       `<runtime>=<version>=<image>` (node=18.19.0=reg/coop-node@...)
#   NPM_REGISTRY, PIP_INDEX_URL         the co-op's caches, which the standard build installs from
# Writes the pushed digest to image-digest.txt and prints `PUSHED_DIGEST=sha256:...`. When the
# app itself cannot be built (the standard build refuses it, or the image's build fails: its
# tests, its Dockerfile), the last line is `BUILD_ERROR=<why>`: building it again would fail
# again, and the caller does not retry. Every other failure (a fetch, a pull, a push) may pass.
set -euo pipefail

required=(APP REPO SHA BRANCH IMAGE)
# Credentials given (the Jenkins job's) win; with none, the agent's own auth file. (A
# REGISTRY_AUTH_FILE that podman's environment sets for other reasons is not the credentials.)
own_auth=""
if [ -z "${REGISTRY_PASSWORD:-}" ] && [ -n "${REGISTRY_AUTH_FILE:-}" ]; then
  own_auth="$REGISTRY_AUTH_FILE"
else
  required+=(REGISTRY_USER REGISTRY_PASSWORD)
fi
for var in "${required[@]}"; do
  if [ -z "${!var:-}" ]; then
    echo "build-app-image: $var is not set (a parameter of the app-image job)" >&2
    exit 2
  fi
done
if [ -n "$own_auth" ] && [ ! -r "$own_auth" ]; then
  echo "build-app-image: REGISTRY_AUTH_FILE $REGISTRY_AUTH_FILE cannot be read" >&2
  exit 2
fi
if ! [[ "$SHA" =~ ^[0-9a-f]{40}$ ]]; then
  echo "build-app-image: SHA must be a full commit sha (40 hex digits), not '$SHA'" >&2
  exit 2
fi
# The password of REPO's userinfo, as written and URL-decoded, and REPO without it, as the build
# shows it (this log, the image's source label): resources/git_url.py's rule, the userinfo
# ending at the last @ before the first / ? # (an scp-like URL's: before the first /).
password="$(printf '%s' "$REPO" | sed -nE \
  -e 's|^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#:]*:([^/?#]*)@.*|\1|p;t' \
  -e 's|^[^/:]*:([^/]*)@.*|\1|p')"
decoded="$(printf '%b' "${password//%/\\x}")"
shown_repo="$REPO"
if [ -n "$password" ]; then
  shown_repo="${REPO/":$password@"/@}"
  shown_repo="${shown_repo/"://@"/://}"  # no user either: no userinfo left
  shown_repo="${shown_repo#@}"
fi
hide() {  # git's own messages, without the password (for git://user:pw@host, git echoes it)
  local line
  while IFS= read -r line; do
    if [ -n "$password" ]; then line="${line//"$password"/***}"; fi
    if [ -n "$decoded" ]; then line="${line//"$decoded"/***}"; fi
    printf '%s\n' "$line"
  done
}
tls="${REGISTRY_TLS_VERIFY:-true}"
certs=()
if [ -n "${REGISTRY_CERT_DIR:-}" ]; then certs=(--cert-dir "$REGISTRY_CERT_DIR"); fi
registry="${IMAGE%%/*}"
top="$PWD"
work="$top/build-$APP"
rm -rf "$work" "$top/image-digest.txt"
mkdir -p "$work/src"

echo "== checkout $shown_repo $SHA"
git -C "$work/src" init -q
fetch() { git -C "$work/src" fetch -q --no-tags "$@" 2>&1 | hide; }
if ! fetch --depth 1 -- "$REPO" "$SHA"; then
  # Some servers serve a commit only through a branch: fetch the branch, then find the commit.
  fetch -- "$REPO" "refs/heads/$BRANCH"
fi
git -C "$work/src" -c advice.detachedHead=false checkout -q "$SHA"
rm -rf "$work/src/.git"

umask 077
if [ -n "$own_auth" ]; then
  auth="$own_auth"
else
  auth="$work/auth.json"
  trap 'rm -f "$auth"' EXIT  # the registry's credentials go with the script, even when a step fails
  printf '%s' "$REGISTRY_PASSWORD" | podman login --authfile "$auth" --tls-verify="$tls" \
    "${certs[@]}" --username "$REGISTRY_USER" --password-stdin "$registry"
fi
umask 022

# No Dockerfile: the standard build writes one (outside the build context), by convention.
dockerfile=()
mismatch=""
if [ ! -f "$work/src/Dockerfile" ]; then
  standard="${STANDARD_BUILD:-$(dirname "$0")/standard_build.py}"
  runtimes=""
  for item in ${RUNTIME_IMAGES:-}; do
    name="${item%%=*}"; rest="${item#*=}"; runtimes+="$name=${rest%%=*},"
  done
  if [ ! -f "$standard" ]; then
    echo "build-app-image: the repository has no Dockerfile, and $standard is missing" >&2
    echo "BUILD_ERROR=no Dockerfile, and no standard build on this build host"
    exit 2
  fi
  echo "== standard build (no Dockerfile)"
  set +e
  python3 "$standard" "$work/src" --runtimes "$runtimes" --dockerfile "$work/Dockerfile" \
    --npm-registry "${NPM_REGISTRY:-}" --pip-index "${PIP_INDEX_URL:-}" >"$work/standard.txt"
  status=$?
  set -e
  cat "$work/standard.txt"
  if [ "$status" = 3 ]; then
    echo "BUILD_ERROR=the standard build cannot build this repository (see ERROR above)"
  fi
  if [ "$status" != 0 ]; then exit "$status"; fi
  runtime="$(sed -n 's/^RUNTIME=//p' "$work/standard.txt")"
  available="$(sed -n 's/^AVAILABLE=//p' "$work/standard.txt")"
  mismatch="$(sed -n 's/^WARNING: //p' "$work/standard.txt")"
  BASE_IMAGE=""
  for item in $RUNTIME_IMAGES; do
    if [ "${item%%=*}" = "$runtime" ]; then rest="${item#*=}"; BASE_IMAGE="${rest#*=}"; fi
  done
  dockerfile=(-f "$work/Dockerfile")
fi

build_args=(--build-arg "GIT_SHA=$SHA")
if [ -n "${BASE_IMAGE:-}" ]; then
  build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  if ! podman image exists "$BASE_IMAGE"; then
    echo "== pull $BASE_IMAGE"
    podman pull -q --authfile "$auth" --tls-verify="$tls" "${certs[@]}" "$BASE_IMAGE"
  fi
fi

echo "== build $IMAGE:$SHA"
network=()
if [ -n "${BUILD_NETWORK:-}" ]; then network=(--network "$BUILD_NETWORK"); fi
set +e
podman build --pull=never --layers --force-rm "${network[@]}" "${build_args[@]}" \
  --label "org.opencontainers.image.revision=$SHA" \
  --label "org.opencontainers.image.source=$shown_repo" \
  --label "org.coop-infra.app=$APP" \
  "${dockerfile[@]}" -t "$IMAGE:$SHA" "$work/src" 2>&1 | tee "$work/build.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" != 0 ]; then
  # The standard build's test step ends a failed run of the app's tests with this line (its
  # last one: what the repository itself prints earlier does not count).
  failed_tests=""
  if [ ${#dockerfile[@]} -gt 0 ]; then
    failed_tests="$(grep -a "^coop-infra: the app's tests failed: " "$work/build.log" | tail -n 1 || true)"
  fi
  if [ -n "$failed_tests" ]; then
    echo "BUILD_ERROR=the app's tests failed (${failed_tests##*tests failed: }): nothing was pushed"
    exit 4
  fi
  if [ -n "$mismatch" ]; then
    # The version the app asks for may be why: say what there is.
    echo "build-app-image: the build failed, and the app asks for another runtime than the" \
      "base image has: ${mismatch//$'\n'/; }. Available: $available" >&2
  fi
  echo "BUILD_ERROR=the image's build failed (podman build exited $status)"
  exit 4
fi

echo "== push $IMAGE:$SHA"
podman push --authfile "$auth" --tls-verify="$tls" "${certs[@]}" --digestfile "$work/digest" \
  "$IMAGE:$SHA" "docker://$IMAGE:$SHA"
if [ -z "$own_auth" ]; then rm -f "$auth"; fi
digest="$(cat "$work/digest")"
printf '%s\n' "$digest" > "$top/image-digest.txt"
echo "PUSHED_DIGEST=$digest"
