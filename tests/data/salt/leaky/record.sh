#!/bin/sh
# Re-record leaky.json: masterless salt (the project's venv), made-up secrets, a throwaway root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${VENV:-$here/../../../../.venv}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/etc" "$tmp/pillar" "$tmp/out"
cat > "$tmp/etc/minion" <<CONF
id: web-staging-1
file_client: local
root_dir: $tmp/root
file_roots: {base: ["$here"]}
pillar_roots: {base: ["$tmp/pillar"]}
log_level: quiet
CONF
cat > "$tmp/pillar/top.sls" <<'SLS'
base: {'*': [secrets]}
SLS
cat > "$tmp/pillar/secrets.sls" <<SLS
root: "$tmp/out"
registry_client: {user: deploy, password: 'pull-S3cret "quoted" \\ back'}
database: {password: 'db S3cret/with spaces & "quotes"'}
SLS
echo '{}' > "$tmp/out/auth.json"
echo '{}' > "$tmp/out/db.json"
echo > "$tmp/out/registry.url"
echo > "$tmp/out/db.b64"
"$venv/bin/salt-call" --local -c "$tmp/etc" --out=json state.apply leaky \
  | sed "s#$tmp#/tmp/leaky#g" > "$here/../leaky.json"
