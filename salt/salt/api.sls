{#- salt-api on the salt master: rest_cherrypy over TLS on the master's address, and an eauth
    account of its own (sharedsecret) for Dagster, which reaches the master only this way, as an
    operator's machine would (resources/salt_api.py). Included by salt.master.

    Pillar (the master's only; infra_assets/configuration/pillar.py): salt:api:listen (its address; default
    salt:master:interface), salt:api:port (default 8000), salt:api:user (default dagster),
    salt:api:password (the shared secret), salt:api:tls:cert and salt:api:tls:key (PEM: the api's
    certificate, which Dagster trusts as its CA file, and its key).

    The account may run anything (`.*`), wheel (keys, pillar_roots), runner and jobs functions:
    what SaltResource does. The config file holds the secret: 0600, root; the key too.
    salt-api's systemd unit comes with the salt install (images: salt.master, bake.sh). The master
    reads external_auth and sharedsecret and salt-api reads rest_cherrypy and
    netapi_enable_clients: a change restarts both.
    An image bake writes nothing here (no address, no secret). #}
{%- from "lib/site.jinja" import bake with context %}
{%- if not bake %}
{%- set api = pillar['salt']['api'] %}
{%- set listen = api.get('listen') or pillar['salt']['master']['interface'] %}
{%- set user = api.get('user', 'dagster') %}
{%- set tls_dir = '/etc/salt/pki/api' %}

salt-api-tls-dir:
  file.directory:
    - name: {{ tls_dir }}
    - makedirs: True
    - user: root
    - mode: '0700'

salt-api-tls-cert:
  file.managed:
    - name: {{ tls_dir }}/api.crt
    - contents_pillar: salt:api:tls:cert
    - user: root
    - mode: '0644'
    - require:
      - file: salt-api-tls-dir

salt-api-tls-key:
  file.managed:
    - name: {{ tls_dir }}/api.key
    - contents_pillar: salt:api:tls:key
    - user: root
    - mode: '0600'
    - show_changes: False
    - require:
      - file: salt-api-tls-dir

salt-api-config:
  file.serialize:
    - name: /etc/salt/master.d/api.conf
    - makedirs: True
    - user: root
    - mode: '0600'
    - show_changes: False
    - serializer: yaml
    - dataset:
        rest_cherrypy:
          host: {{ listen | json }}
          port: {{ api.get('port', 8000) | int }}
          ssl_crt: {{ tls_dir }}/api.crt
          ssl_key: {{ tls_dir }}/api.key
        netapi_enable_clients: [local, local_async, runner, wheel]
        external_auth:
          sharedsecret:
            {{ user | json }}: ['.*', '@wheel', '@runner', '@jobs']
        sharedsecret: {{ api['password'] | json }}

# The master reads external_auth and sharedsecret: restart it in the background, once this run
# has returned (as salt.master does for its own settings).
salt-api-master-restart:
  cmd.run:
    # In 5 s, from a transient systemd timer: after this run has sent its return (a restart
    # now would cut it off, and the run would read as "did not answer").
    - name: systemd-run --quiet --on-active=5 systemctl restart salt-master
    - onchanges:
      - file: salt-api-config

salt-api-service:
  service.running:
    - name: salt-api
    - enable: True
    # salt-api reaches the master at the address the master's own config names
    # (salt.master: interface): a change there restarts salt-api too.
    - watch:
      - file: salt-master-config
      - file: salt-api-config
      - file: salt-api-tls-cert
      - file: salt-api-tls-key
{%- endif %}
