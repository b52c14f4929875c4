{#- A release of one app on a web host, blue/green. The `release/<environment>/<app>` assets apply
    this state with the release in the pillar (state.apply app pillar={"release": {...}}):

        release: {app: hello, digest: "sha256:...", sha: "<commit>", health_timeout_s: 30}

    0. for an app with a domain in this environment: its certificate, unless one valid for
       30 days more is there (certbot over ACME's HTTP-01; web:acme says from where);
    1. pull <registry>/<app>@<digest> with the registry's pull account and CA (the `web` state put
       them under /etc/containers);
    2. start it in the slot the live release is not in (each app has two loopback ports on the
       host, `apps.<app>.slots`), with --init, hardened: a network namespace of its own,
       published on the host's loopback only, no capability, no-new-privileges, a read-only
       root with a tmpfs at /tmp, user 65534; its port in $PORT;
    3. wait for its health path; if it does not answer 200 in time: print why (the last answer,
       the container's last lines), remove the new container and fail. nginx and the live
       release are not touched;
    4. render the app's nginx site with its upstream on the new container
       (/etc/nginx/conf.d/app-<app>.conf) and reload the host's nginx (the one the `web`
       state runs), then wait until nginx answers with the new release (header X-Coop-Release);
    5. let nginx's workers from before the reload finish their requests (they hold the old
       upstream), then stop the old container: it stays, stopped, with its image, as the release
       to roll back to;
    6. record the live and the previous release (/var/lib/coop/releases/<app>.json) and
       remove this app's older images.

    Applying the live release again changes nothing. A rollback is a release of the previous
    digest, whose image is still on the host (nothing is pulled).

    Each step is a `cmd.run` that checks before it acts and says whether it changed anything
    (`stateful`: its last line is `changed=yes|no comment='...'`). No unless/onlyif: in salt
    3008, the first state with one makes the minion load every state module (about 4 s per
    apply, measured), and this state is on the path from a push to the release. For the same
    reason it does not include `web` (23 more states): it checks that the `web` state has run.

    No pillar value is spliced into a shell command as it is: each script starts with
    `{{ vars('image', ...) }}`, shell variables set to values quoted for the shell (salt's `quote`
    filter: shlex.quote), and uses "$image", "$health_url"... The digest and the commit are
    checked here too (sha256:<64 hex digits>; 40 hex digits or empty), as the release asset
    checks them before it asks anything of the hosts. #}
{%- set release = pillar.get('release', {}) %}
{%- set apps = pillar.get('apps', {}) %}
{%- set name = release.get('app', '') %}
{%- set digest = release.get('digest') or '' %}
{%- set sha = release.get('sha') or '' %}
{#- (`$` also matches before a final newline: the lengths rule that out.) #}
{%- if not name or not (digest | string | regex_match('^(sha256:[0-9a-f]{64})$'))
      or digest | length != 71
      or not (sha | string | regex_match('^([0-9a-f]{40})?$')) or sha | length not in (0, 40) %}

app-release-in-pillar:
  test.fail_without_changes:
    - name: >-
        no release in the pillar, or not one: apply with
        pillar={"release": {"app": "<app>", "digest": "sha256:<64 hex digits>",
        "sha": "<the commit: 40 hex digits, or empty>"}}
{%- elif name not in apps or not pillar.get('registry_client') or not pillar.get('web') %}

app-release-known:
  test.fail_without_changes:
    - name: >-
        {{ name | json }} is not an app of this host's pillar (apps: {{ apps | join(', ') or 'none' }}),
        or the host has no registry to pull from: is it a web host of the topology?
{%- else %}
{%- set app = apps[name] %}
{%- set web = pillar['web'] %}
{%- set client = pillar['registry_client'] %}
{%- set timeout = release.get('health_timeout_s', 30) | int %}
{%- set acme = web.get('acme') or {} %}
{%- set image = client['address'] ~ '/' ~ name ~ '@' ~ digest %}
{%- set record_file = '/var/lib/coop/releases/' ~ name ~ '.json' %}
{%- if salt['file.file_exists'](record_file) %}
{%- set record = salt['file.read'](record_file) | load_json %}
{%- else %}
{%- set record = {} %}
{%- endif %}
{%- set current = record.get('current') or {} %}
{%- if current.get('digest') == digest %}
{%- set slot = current.get('slot', 'blue') %}
{%- else %}
{%- set slot = 'green' if current.get('slot') == 'blue' else 'blue' %}
{%- endif %}
{%- set other = 'green' if slot == 'blue' else 'blue' %}
{%- set port = app['slots'][slot] %}
{%- set container = 'app-' ~ name ~ '-' ~ slot %}
{%- set old = 'app-' ~ name ~ '-' ~ other %}
{%- set this = {'digest': digest, 'sha': sha, 'image': image, 'slot': slot, 'port': port,
                'container': container} %}
{%- if current.get('digest') == digest %}
{%- set new_record = {'current': this, 'previous': record.get('previous')} %}
{%- else %}
{%- set new_record = {'current': this, 'previous': current or None} %}
{%- endif %}
{%- set keep = (new_record['previous'] or {}).get('digest') or digest %}
{%- set pidfile = '/run/nginx.pid' %}
{#- The values the scripts use, as shell variables (see the top). #}
{%- set sh = {
      'app': name,
      'digest': digest,
      'sha': sha,
      'image': image,
      'registry': client['address'],
      'slot': slot,
      'port': port,
      'container': container,
      'old': old,
      'keep': keep,
      'timeout': timeout,
      'health_url': 'http://127.0.0.1:' ~ port ~ app['health'],
      'served_url': ('https://' ~ app['domain'] ~ ':' ~ web['https_port'] if app['domain']
                     else 'http://' ~ web['listen'] ~ ':' ~ web['port']) ~ app['health'],
      'resolve': (app['domain'] ~ ':' ~ web['https_port'] ~ ':' ~ web['listen']) if app['domain'] else '',
      'host_header': app['domain'] or name,
      'domain': app['domain'],
      'acme_directory': acme.get('directory', ''),
      'acme_email': acme.get('email', ''),
      'acme_ca': '/etc/coop/acme/ca.pem' if acme.get('ca_cert') else '',
      'conf': '/etc/nginx/conf.d/app-' ~ name ~ '.conf',
      'pidfile': pidfile,
      'web_state': 'highstate/web-' ~ web['environment'],
      'old_workers': '/run/coop-app-' ~ name ~ '.old-workers'} %}
{%- macro vars() %}{% for key in varargs %}{{ key }}={{ sh[key] | string | quote }}{{ ' ' if not loop.last else '' }}{% endfor %}{% endmacro %}
{%- set conf = sh['conf'] %}
{#- podman reads /etc/containers/containers.conf (salt/web) and the drop-ins of
    containers.conf.d where it always does: CONTAINERS_CONF would make it read that file only. #}
{%- set env = {'REGISTRY_AUTH_FILE': '/etc/containers/auth.json'} %}
{#- Go templates for podman, kept out of Jinja's way. #}
{%- set running_fmt = "'{{.State.Running}}'" %}
{%- set live_fmt = "'{{.ImageDigest}} {{.State.Running}} {{index .Config.Labels \"coop.port\"}}'" %}
{%- set ref_fmt = "'{{.Repository}}@{{.Digest}}'" %}

app-{{ name }}-web-ready:
  cmd.run:
    - name: |
        {{ vars('pidfile', 'web_state') }}
        # The web state (highstate/web-<environment>) runs nginx and writes podman's config.
        if ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
          echo "changed=no comment='nginx is not running on this host ($pidfile): apply the web state first ($web_state)'"; exit 1
        fi
        for f in /etc/containers/containers.conf /etc/containers/auth.json; do
          [ -f "$f" ] || { echo "changed=no comment='$f is missing: apply the web state first ($web_state)'"; exit 1; }
        done
        mkdir -p /etc/nginx/conf.d /var/lib/coop/releases
        echo "changed=no comment='nginx runs; podman is configured'"
    - stateful: True
    - shell: /bin/bash

{%- if app['domain'] %}

app-{{ name }}-certificate:
  cmd.run:
    - name: |
        {{ vars('domain', 'acme_directory', 'acme_email', 'acme_ca', 'conf') }}
        cert="/etc/letsencrypt/live/$domain/fullchain.pem"
        renewal="/etc/letsencrypt/renewal/$domain.conf"
        valid_for() {  # the certificate is there, for the domain, valid for $1 s more
          [ -f "$cert" ] && openssl x509 -in "$cert" -noout -checkend "$1" >/dev/null \
            && openssl x509 -in "$cert" -noout -checkhost "$domain" | grep -q 'does match'
        }
        # From the directory the topology names now (a certificate from another is replaced).
        same_server=yes
        if [ -f "$renewal" ] && ! grep -qxF "server = $acme_directory" "$renewal"; then same_server=""; fi
        if [ -n "$same_server" ] && valid_for 2592000; then
          echo "changed=no comment='the certificate for $domain is valid for 30 days more'"; exit 0
        fi
        # A site written before its domain had TLS sends the ACME server's challenge to the
        # app: let it answer them from the webroot first (this release rewrites the site).
        if [ -f "$conf" ] && ! grep -q acme-challenge "$conf"; then
          sed -i '0,/server_name [^;]*;/s||&\n    location /.well-known/acme-challenge/ { root /var/lib/coop/acme; default_type text/plain; }|' "$conf"
          nginx -t -q && systemctl reload nginx && sleep 0.5
        fi
        [ -n "$acme_ca" ] && export REQUESTS_CA_BUNDLE="$acme_ca"
        if [ -n "$acme_email" ]; then account=(--email "$acme_email"); else account=(--register-unsafely-without-email); fi
        force=(); [ -z "$same_server" ] && force=(--force-renewal)
        started=$SECONDS; out=$(mktemp)
        # HTTP-01: the token goes to the webroot, which nginx serves on port 80 for any name.
        # (certbot's lock: another certbot at work, the timer's say, is waited for.)
        for attempt in 1 2 3 4 5 6; do
          certbot certonly --non-interactive --agree-tos "${account[@]}" "${force[@]}" \
            --server "$acme_directory" --webroot --webroot-path /var/lib/coop/acme \
            --cert-name "$domain" --domains "$domain" --key-type ecdsa \
            --deploy-hook 'systemctl reload nginx' >"$out" 2>&1 && got=yes || got=""
          [ -n "$got" ] || ! grep -q 'Another instance of Certbot is already running' "$out" && break
          sleep 5
        done
        if [ -n "$got" ]; then
          rm -f "$out"
          echo "changed=yes comment='certificate for $domain from $acme_directory in $((SECONDS - started)) s'"; exit 0
        fi
        echo "certbot could not get a certificate for $domain from $acme_directory:"
        tail -n 15 "$out" | tr -d "'"
        # certbot's own reason, in the comment (salt splits it at every = and ')
        why=$(grep -E '^ *(Detail|An unexpected error occurred|Error)|Error:' "$out" | tail -n 1 | tr -d "'=" | cut -c1-300)
        rm -f "$out"
        if valid_for 0; then
          # Valid still (due for renewal, or from a directory named before): the release goes
          # on with it, and the timer or the next release tries again.
          echo "changed=no comment='no new certificate; the one for $domain is still valid, kept'"; exit 0
        fi
        echo "changed=no comment='no certificate for $domain from $acme_directory: ${why:-see the output above} (is $domain served by this host on port 80?)'"
        exit 1
    - stateful: True
    - shell: /bin/bash
    - require:
      - cmd: app-{{ name }}-web-ready
{%- endif %}

app-{{ name }}-pull:
  cmd.run:
    - name: |
        {{ vars('image', 'registry') }}
        if podman image exists "$image"; then
          echo "changed=no comment='$image is here already'"; exit 0
        fi
        started=$SECONDS
        podman pull -q --cert-dir "/etc/containers/certs.d/$registry" "$image" || exit 1
        echo "changed=yes comment='pulled $image in $((SECONDS - started)) s'"
    - stateful: True
    - shell: /bin/bash
    - env: {{ env | json }}
    - require:
      - cmd: app-{{ name }}-web-ready
{%- if app['domain'] %}
      - cmd: app-{{ name }}-certificate
{%- endif %}

app-{{ name }}-start:
  cmd.run:
    - name: |
        {{ vars('app', 'digest', 'sha', 'image', 'slot', 'port', 'container') }}
        if [ "$(podman container inspect -f {{ live_fmt }} "$container" 2>/dev/null)" = "$digest true $port" ]; then
          echo "changed=no comment='$container runs $digest on port $port'"; exit 0
        fi
        podman rm -f -i -t 5 "$container" >/dev/null
        # Hardened: a network namespace of its own (podman's bridge), published on the host's
        # loopback only (nginx proxies to it); no capability, no privilege gained by exec, a
        # read-only root with a tmpfs for scratch, a user that is not root. The host's firewall
        # (common.firewall) drops what it forwards to the cloud's metadata service.
        podman run -d --init --pull=never --name "$container" \
          --network bridge --publish "127.0.0.1:$port:$port" \
          --cap-drop=all --security-opt=no-new-privileges \
          --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,nosuid,nodev,size=64m \
          --user 65534:65534 \
          --label "coop.app=$app" --label "coop.digest=$digest" --label "coop.sha=$sha" \
          --label "coop.slot=$slot" --label "coop.port=$port" \
          -e "PORT=$port" -e HOST=0.0.0.0 "$image" || exit 1
        echo "changed=yes comment='started $container on 127.0.0.1:$port'"
    - stateful: True
    - shell: /bin/bash
    - env: {{ env | json }}
    - require:
      - cmd: app-{{ name }}-pull

app-{{ name }}-healthy:
  cmd.run:
    - name: |
        {{ vars('image', 'container', 'timeout', 'health_url') }}
        # salt reads the last line's comment='...' splitting at every `=`: the URL's are %3D there.
        shown=${health_url//=/%3D}
        body=$(mktemp); started=$SECONDS; code=""
        while :; do
          code=$(curl -s -o "$body" -w '%{http_code}' --max-time 2 "$health_url") || code=""
          if [ "$code" = 200 ]; then
            echo "GET $health_url -> 200 after $((SECONDS - started)) s: $(head -c 300 "$body")"
            rm -f "$body"
            echo "changed=no comment='healthy: $shown answers 200'"; exit 0
          fi
          if [ "$(podman container inspect -f {{ running_fmt }} "$container" 2>/dev/null)" != true ]; then
            echo "$container has stopped"; break
          fi
          [ $((SECONDS - started)) -ge "$timeout" ] && break
          sleep 0.2
        done
        echo "health check failed: GET $health_url -> ${code:-no answer} within $timeout s$([ -s "$body" ] && echo ": $(head -c 300 "$body" | tr -d "'")")"
        echo "--- $container ($image), its last lines:"
        podman logs --tail 30 "$container" 2>&1
        rm -f "$body"
        podman rm -f -t 2 "$container" >/dev/null 2>&1 && echo "--- removed $container; the live release is untouched"
        echo "changed=yes comment='health check failed: $shown -> ${code:-no answer} within $timeout s'"
        exit 1
    - stateful: True
    - shell: /bin/bash
    - env: {{ env | json }}
    - require:
      - cmd: app-{{ name }}-start

app-{{ name }}-nginx:
  file.managed:
    - name: {{ conf | json }}
    - source: salt://app/files/nginx-app.conf.jinja
    - template: jinja
    - mode: '0644'
    - context:
        name: {{ name | json }}
        environment: {{ web['environment'] | json }}
        digest: {{ digest | json }}
        sha: {{ sha | json }}
        slot: {{ slot | json }}
        port: {{ port | int }}
        listen: {{ web['listen'] | json }}
        web_port: {{ web['port'] | int }}
        https_port: {{ web['https_port'] | int }}
        domain: {{ app['domain'] | json }}
    - require:
      - cmd: app-{{ name }}-healthy
{%- if app['domain'] %}
      - cmd: app-{{ name }}-certificate
{%- endif %}

app-{{ name }}-reload:
  cmd.run:
    - name: |
        {{ vars('pidfile', 'old_workers') }}
        # nginx's workers before the reload: they finish what they hold with the old upstream,
        # and the old container stops only once they are gone (stop-old).
        pgrep -P "$(cat "$pidfile")" > "$old_workers" || true
        systemctl reload nginx
    - shell: /bin/bash
    - onchanges:
      - file: app-{{ name }}-nginx

app-{{ name }}-switched:
  cmd.run:
    - name: |
        {{ vars('digest', 'slot', 'port', 'served_url', 'host_header', 'resolve') }}
        # Which release nginx serves, asked of this host's nginx itself (--resolve: the domain
        # at the host's address), its certificate checked for the domain and against the
        # issuer certbot got with it (chain.pem: the host need not trust the ACME server's root).
        served() {
          if [ -n "$resolve" ]; then
            curl -s -D - -o /dev/null --max-time 2 --resolve "$resolve" \
              --cacert "/etc/letsencrypt/live/$host_header/chain.pem" "$served_url"
          else
            curl -s -D - -o /dev/null --max-time 2 -H "Host: $host_header" "$served_url"
          fi | grep -qi "^x-coop-release: $digest"
        }
        if served; then echo "changed=no comment='nginx serves $digest'"; exit 0; fi
        for i in $(seq 75); do
          sleep 0.2
          served && { echo "changed=yes comment='nginx serves $digest (slot $slot, port $port)'"; exit 0; }
        done
        echo "nginx does not serve $digest after 15 s; its error log ends:"
        tail -n 20 /var/log/nginx/error.log
        echo "changed=no comment='nginx does not serve $digest after 15 s'"
        exit 1
    - stateful: True
    - shell: /bin/bash
    - require:
      - file: app-{{ name }}-nginx
      - cmd: app-{{ name }}-reload

app-{{ name }}-stop-old:
  cmd.run:
    - name: |
        {{ vars('old', 'pidfile', 'old_workers') }}
        if [ "$(podman container inspect -f {{ running_fmt }} "$old" 2>/dev/null)" != true ]; then
          echo "changed=no comment='$old is not running'"; exit 0
        fi
        # nginx's workers from before the reload finish the requests they hold with the old
        # upstream (at most 10 s), then the old release stops. It stays, stopped, for a rollback.
        master=$(cat "$pidfile" 2>/dev/null)
        workers=$(cat "$old_workers" 2>/dev/null); rm -f "$old_workers"
        for i in $(seq 100); do
          left=""
          for pid in $workers; do
            [ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$master" ] && left="$left $pid"
          done
          [ -z "$left" ] && break
          sleep 0.1
        done
        podman stop -t 10 "$old" >/dev/null || exit 1
        echo "changed=yes comment='stopped $old (kept for a rollback)'"
    - stateful: True
    - shell: /bin/bash
    - env: {{ env | json }}
    - require:
      - cmd: app-{{ name }}-switched

app-{{ name }}-record:
  file.serialize:
    - name: {{ record_file | json }}
    - mode: '0644'
    - serializer: json
    - dataset: {{ new_record | json }}
    - require:
      - cmd: app-{{ name }}-switched

app-{{ name }}-prune:
  cmd.run:
    - name: |
        {{ vars('app', 'digest', 'registry', 'keep') }}
        # The live and the previous release stay; this app's older images go.
        older=$(podman images --noheading --format {{ ref_fmt }} --filter "reference=$registry/$app" \
                | grep -v -e "@$digest\$" -e "@$keep\$" | sort -u)
        [ -z "$older" ] && { echo "changed=no comment='no older image'"; exit 0; }
        for ref in $older; do
          podman rmi "$ref" >/dev/null 2>&1 && echo "removed $ref" || echo "kept $ref (in use)"
        done
        echo "changed=yes comment='older images of $app removed'"
    - stateful: True
    - shell: /bin/bash
    - env: {{ env | json }}
    - require:
      - file: app-{{ name }}-record
      - cmd: app-{{ name }}-stop-old
{%- endif %}
