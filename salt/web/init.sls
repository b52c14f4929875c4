{#- A web host, ready for app releases: nginx, podman with crun (podman inside a container, as in
    the lab, runs with crun and not runc), and the registry's pull account and certificate.

    For app releases (salt/app): each app's site and upstream go in
    /etc/nginx/conf.d/app-<app>.conf, and the `app` state reloads nginx (`systemctl reload
    nginx`) when it changes one; a new nginx.conf restarts it (web-nginx-restart).
    Containers: /etc/containers/containers.conf, read by podman where it always looks, with the
    drop-ins of containers.conf.d; pulls authenticate with /etc/containers/auth.json and trust
    /etc/containers/certs.d/<registry>/ca.crt.
    catatonit: the containers run with --init. An image bake: the packages, nginx's folders and the
    container runtime's settings; nginx's own config names the host's address, so it waits for
    the server's first highstate. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set prefix = '/etc/nginx/' %}
{%- set client = pillar.get('registry_client', {}) %}

include:
  - common

web-packages:
  pkg.installed:
    - pkgs: [nginx-light, podman, crun, catatonit, uidmap, slirp4netns]
    - refresh: False

{%- for dir in ['etc/nginx/conf.d', 'var/log/nginx', 'var/lib/nginx/body', 'var/lib/nginx/proxy',
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

{#- nginx runs from its package before the first highstate, Debian's default site on *:80; a
    reload cannot bind the host's own address while that socket is held (EADDRINUSE in its error
    log, and `systemctl reload` still says it worked): a new nginx.conf restarts it.
    The apps' sites (conf.d) are reloaded by the `app` state. #}
{{ daemon('web-nginx', 'nginx', watch=[{'file': 'web-nginx-config'}], on_change='restart',
          host=web['listen'], port=web['port']) }}
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
