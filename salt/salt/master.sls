{#- The salt master: binds to its private address only, accepts no key by itself (the `minions`
    asset accepts exactly the hosts of the topology), serves this repo's states and the pillar
    generated from the topology. Salt is the venv at /opt/salt that every image has
    (packer/scripts/bake.sh, pinned by packer/salt-requirements.txt, CherryPy for salt-api
    included); this state ships the systemd units of salt-master and salt-api (salt.api
    configures and starts salt-api). An image bake writes the units and no more: nothing enabled
    or started. #}
{%- from "lib/site.jinja" import bake with context %}

include:
  - common
  - salt.api
{%- for unit, description, after, limit in [
      ('salt-master', 'The Salt Master Server', 'network.target', 100000),
      ('salt-api', 'The Salt API', 'network.target salt-master.service', 8192)] %}

{{ unit }}-unit:
  file.managed:
    - name: /etc/systemd/system/{{ unit }}.service
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/salt/master.sls): salt from its venv (packer/scripts/bake.sh).
        [Unit]
        Description={{ description }}
        Documentation=man:{{ unit }}(1) https://docs.saltproject.io/en/latest/contents.html
        After={{ after }}

        [Service]
        Type=notify
        NotifyAccess=all
        LimitNOFILE={{ limit }}
        ExecStart=/opt/salt/bin/{{ unit }}
{%- if unit == 'salt-api' %}
        TimeoutStopSec=3
{%- endif %}

        [Install]
        WantedBy=multi-user.target
{%- endfor %}
{%- if not bake %}

salt-master-unit-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: salt-master-unit
      - file: salt-api-unit
    - require_in:
      - service: salt-api-service

salt-master-enabled:
  service.enabled:
    - name: salt-master
    - require:
      - cmd: salt-master-unit-reload
{%- set master = pillar['salt']['master'] %}

salt-master-pillar-dir:
  file.directory:
    - name: {{ master['pillar_roots'][0] }}
    - makedirs: True
    - mode: '0700'

# What minions push (the postgres hosts' backups: cp.push) lands under minions/<id>/files:
# root's alone (the support server runs other services, whose users must not read dumps).
salt-master-minion-files:
  file.directory:
    - name: /var/cache/salt/master/minions
    - makedirs: True
    - mode: '0700'

salt-master-config:
  file.serialize:
    - name: /etc/salt/master.d/coop.conf
    - makedirs: True
    - mode: '0644'
    - serializer: yaml
    - dataset:
        interface: {{ master['interface'] | json }}
        ipv6: False
        auto_accept: False
        open_mode: False
        file_roots:
          base: {{ master['file_roots'] | json }}
        pillar_roots:
          base: {{ master['pillar_roots'] | json }}
        fileserver_backend: [roots]
        worker_threads: {{ master['worker_threads'] }}
        # The postgres hosts push their backups here (cp.push, salt/_modules/coop_backup.py):
        # the copies off their hosts, under /var/cache/salt/master/minions/<host>/files/.
        file_recv: True
        file_recv_max_size: 4096
        hash_type: sha256

salt-master-restart:
  cmd.run:
    # In 5 s, from a transient systemd timer: after this run has sent its return (a restart
    # now would cut it off, and the run would read as "did not answer").
    - name: systemd-run --quiet --on-active=5 systemctl restart salt-master
    - onchanges:
      - file: salt-master-config
      - file: salt-master-unit
{%- endif %}
