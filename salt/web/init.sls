{#- A web host, ready for app releases: nginx, podman with crun (podman inside a container, as in
    the lab, runs with crun and not runc), and the registry's pull account and certificate.

    For app releases (salt/app): each app's site and upstream go in
    /etc/nginx/conf.d/app-<app>.conf, and the `app` state reloads nginx (`systemctl reload
    nginx`) when it changes one; a new nginx.conf restarts it (web-nginx-restart).
    Containers: /etc/containers/containers.conf, read by podman where it always looks, with the
    drop-ins of containers.conf.d; pulls authenticate with /etc/containers/auth.json and trust
    /etc/containers/certs.d/<registry>/ca.crt.
    catatonit: the containers run with --init.
    TLS: certbot (Debian's) gets each app domain's certificate over ACME's HTTP-01 challenge,
    when the `app` state releases the app (salt/app); its tokens are served from
    /var/lib/coop/acme on port 80 for any name, and Debian's certbot.timer renews them, with
    nginx reloaded by the deploy hook each certificate records. `web:acme` says where from: the
    directory (Let's Encrypt on a cloud, the lab's pebble in the lab), the account's email, and a
    CA for the directory's own certificate when the trust store lacks it (the lab), which only
    certbot is given (REQUESTS_CA_BUNDLE, also for the timer's renewals).
    An image bake: the packages, nginx's folders and the container runtime's settings; nginx's
    own config names the host's address, so it waits for the server's first highstate. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set prefix = '/etc/nginx/' %}
{%- set client = pillar.get('registry_client', {}) %}

include:
  - common

web-packages:
  pkg.installed:
    - pkgs: [nginx-light, podman, crun, catatonit, uidmap, slirp4netns, certbot]
    - refresh: False

{%- for dir in ['etc/nginx/conf.d', 'var/lib/coop/acme/.well-known/acme-challenge', 'var/log/nginx', 'var/lib/nginx/body', 'var/lib/nginx/proxy',
                'var/lib/nginx/fastcgi', 'var/lib/nginx/uwsgi', 'var/lib/nginx/scgi'] %}
web-dir-{{ dir | replace('/', '-') }}:
  file.directory:
    - name: /{{ dir }}
    - makedirs: True
    - require:
      - pkg: web-packages
{%- endfor %}
{%- if not bake %}
{%- set web = pillar['web'] %}

web-nginx-config:
  file.managed:
    - name: {{ prefix }}nginx.conf
    - source: salt://web/files/nginx.conf.jinja
    - template: jinja
    - mode: '0644'
    # A broken config never replaces a working one (nginx -t on the new file first).
    - check_cmd: /usr/sbin/nginx -t -q -p {{ prefix }} -e /var/log/nginx/error.log -c
    - require:
      - file: web-dir-etc-nginx-conf.d
      - file: web-dir-var-log-nginx
      - file: web-dir-var-lib-nginx-body
      - file: web-dir-var-lib-nginx-proxy
      - file: web-dir-var-lib-nginx-fastcgi
      - file: web-dir-var-lib-nginx-uwsgi
      - file: web-dir-var-lib-nginx-scgi
      - file: web-dir-var-lib-coop-acme-.well-known-acme-challenge

{#- nginx runs from its package before the first highstate, Debian's default site on *:80; a
    reload cannot bind the host's own address while that socket is held (EADDRINUSE in its error
    log, and `systemctl reload` still says it worked): a new nginx.conf restarts it.
    The apps' sites (conf.d) are reloaded by the `app` state. #}
{{ daemon('web-nginx', 'nginx', watch=[{'file': 'web-nginx-config'}], on_change='restart',
          host=web['listen'], port=web['port']) }}
{%- set acme_ca = (web.get('acme') or {}).get('ca_cert') or '' %}

{#- The ACME directory's CA, for certbot alone (the lab's ACME server signs its API itself); an
    empty file where the host's trust store is enough (Let's Encrypt). The same states either
    way: only the data differs. #}
web-acme-ca:
  file.managed:
    - name: /etc/coop/acme/ca.pem
    - makedirs: True
    - mode: '0644'
    - contents: {{ acme_ca | json }}

web-certbot-timer-env:
  file.managed:
    - name: /etc/systemd/system/certbot.service.d/coop.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/web): renewals check the ACME directory against its CA
        # (none here when the host's trust store is used).
        [Service]
{%- if acme_ca %}
        Environment=REQUESTS_CA_BUNDLE=/etc/coop/acme/ca.pem
{%- endif %}

web-certbot-daemon-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: web-certbot-timer-env

{#- Debian's certbot.timer: twice a day, `certbot renew` (each certificate 30 days before it
    expires, with the deploy hook it was issued with: nginx reloads). #}
web-certbot-timer:
  service.running:
    - name: certbot.timer
    - enable: True
    - require:
      - pkg: web-packages
      - cmd: web-certbot-daemon-reload
{%- endif %}

web-containers-conf:
  file.managed:
    - name: /etc/containers/containers.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/web).
        [engine]
        runtime = "crun"
{%- if client and not bake %}

web-registry-ca:
  file.managed:
    - names:
{%- for name in client.get('trusted_as') or [client['address']] %}
      - /etc/containers/certs.d/{{ name }}/ca.crt
{%- endfor %}
    - makedirs: True
    - mode: '0644'
    - contents_pillar: registry_client:ca_cert

web-registry-auth:
  file.serialize:
    - name: /etc/containers/auth.json
    - makedirs: True
    - mode: '0600'
    - show_changes: False
    - serializer: json
    - dataset:
        auths:
          {{ client['address'] | json }}:
            auth: {{ salt['hashutil.base64_b64encode'](client['user'] ~ ':' ~ client['password']) | json }}
{%- endif %}
