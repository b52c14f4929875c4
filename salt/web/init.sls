{#- A web host, ready for app releases: nginx (its own instance on the local site, under the host's
    root on 127.0.0.1), podman with crun (podman inside a container, as in the lab, runs with crun
    and not runc; the local site's processes keep runc, as this machine's podman), and the
    registry's pull account and certificate.

    For app releases (salt/app): each app's site and upstream go in
    {root}/etc/nginx/conf.d/app-<app>.conf, and the `app` state reloads this nginx when it changes
    one (a state that is applied with this one can use `onchanges_in: [{cmd: web-nginx-reload}]`).
    Containers: {root}/etc/containers/containers.conf, read by podman where it always looks, with
    the drop-ins of containers.conf.d (the local site alone points CONTAINERS_CONF and
    CONTAINERS_STORAGE_CONF at its files under the root), pulls authenticate with
    {root}/etc/containers/auth.json and trust {root}/etc/containers/certs.d/<registry>/ca.crt.
    catatonit: the containers run with --init. An image bake: the packages, nginx's folders and the
    container runtime's settings; nginx's own config names the host's address, so it waits for
    the server's first highstate. #}
{%- from "lib/site.jinja" import root, local, bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set prefix = root ~ '/etc/nginx/' %}
{%- set client = pillar.get('registry_client', {}) %}
{%- set runtime = 'runc' if local else 'crun' %}

include:
  - common

web-packages:
  pkg.installed:
    - pkgs: [nginx-light, podman, {{ runtime }}, catatonit, uidmap, slirp4netns]
    - refresh: False

{%- for dir in ['etc/nginx/conf.d', 'var/log/nginx', 'var/lib/nginx/body', 'var/lib/nginx/proxy',
                'var/lib/nginx/fastcgi', 'var/lib/nginx/uwsgi', 'var/lib/nginx/scgi'] %}
web-dir-{{ dir | replace('/', '-') }}:
  file.directory:
    - name: {{ root }}/{{ dir }}
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
    - context:
        root: {{ root | json }}
        local: {{ local }}
    # A broken config never replaces a working one (nginx -t on the new file first).
    - check_cmd: /usr/sbin/nginx -t -q -p {{ prefix }} -e {{ root }}/var/log/nginx/error.log -c
    - require:
      - file: web-dir-etc-nginx-conf.d
      - file: web-dir-var-log-nginx
      - file: web-dir-var-lib-nginx-body
      - file: web-dir-var-lib-nginx-proxy
      - file: web-dir-var-lib-nginx-fastcgi
      - file: web-dir-var-lib-nginx-uwsgi
      - file: web-dir-var-lib-nginx-scgi

{#- A server's nginx runs from its package before the first highstate, Debian's default site on
    *:80; a reload cannot bind the host's own address while that socket is held (EADDRINUSE in
    its error log, and `systemctl reload` still says it worked): a new nginx.conf restarts it.
    The apps' sites (conf.d) are reloaded by the `app` state. #}
{{ daemon('web-nginx', 'nginx', '/usr/sbin/nginx',
          '-p ' ~ prefix ~ ' -c ' ~ prefix ~ 'nginx.conf -e ' ~ root ~ '/var/log/nginx/error.log',
          web.get('pidfile', ''),
          watch=[{'file': 'web-nginx-config'}], on_change='reload' if local else 'restart',
          host=web['listen'], port=web['port']) }}
{%- endif %}

web-containers-conf:
  file.managed:
    - name: {{ root }}/etc/containers/containers.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/web).
        [engine]
        runtime = "{{ runtime }}"
{%- if local %}
        # The local site: several web hosts share this machine; each keeps podman's run-time
        # files (locks, exit codes, events) and network configs under its own root.
        cgroup_manager = "cgroupfs"
        tmp_dir = "{{ root }}/run/libpod"
        events_logger = "file"
        events_logfile_path = "{{ root }}/run/libpod/events.log"
        [network]
        network_config_dir = "{{ root }}/etc/containers/networks"
        [containers]
        # The local site's containers run without CAP_SYS_RESOURCE: keep rlimits within reach.
        default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
{%- endif %}
{%- if local %}

web-containers-storage:
  file.managed:
    - name: {{ root }}/etc/containers/storage.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/web): this host's images and containers stay under its root.
        [storage]
        driver = "vfs"
        graphroot = "{{ root }}/var/lib/containers/storage"
        runroot = "{{ root }}/run/containers/storage"
{%- endif %}
{%- if client and not bake %}

web-registry-ca:
  file.managed:
    - names:
{%- for name in client.get('trusted_as') or [client['address']] %}
      - {{ root }}/etc/containers/certs.d/{{ name }}/ca.crt
{%- endfor %}
    - makedirs: True
    - mode: '0644'
    - contents_pillar: registry_client:ca_cert

web-registry-auth:
  file.serialize:
    - name: {{ root }}/etc/containers/auth.json
    - makedirs: True
    - mode: '0600'
    - show_changes: False
    - serializer: json
    - dataset:
        auths:
          {{ client['address'] | json }}:
            auth: {{ salt['hashutil.base64_b64encode'](client['user'] ~ ':' ~ client['password']) | json }}
{%- endif %}
