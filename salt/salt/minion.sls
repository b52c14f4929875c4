{#- Every host is a salt minion whose id is its host name and whose master is the salt-master
    host's address. The minion restarts itself when this changes. An image bake leaves it out:
    the image has no id and no master (cloud-init writes both on the server's first boot:
    terraform/instances/cloud-init.yaml.tftpl).

    Salt itself is a venv at /opt/salt (packer/scripts/bake.sh, from packer/salt-requirements.txt);
    its minion's systemd unit is this state's, on a server and in an image bake alike (a bake
    writes the unit and enables nothing: the first boot enables and starts the minion once its
    id and master are written). #}
{%- from "lib/site.jinja" import bake with context %}

salt-minion-unit:
  file.managed:
    - name: /etc/systemd/system/salt-minion.service
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/salt/minion.sls): salt from its venv (packer/scripts/bake.sh).
        [Unit]
        Description=The Salt Minion
        Documentation=man:salt-minion(1) https://docs.saltproject.io/en/latest/contents.html
        After=network.target salt-master.service

        [Service]
        KillMode=process
        Type=notify
        NotifyAccess=all
        LimitNOFILE=8192
        ExecStart=/opt/salt/bin/salt-minion

        [Install]
        WantedBy=multi-user.target
{%- if bake %}

salt-minion-bake:
  test.nop:
    - name: the minion's id and master are the server's, written by cloud-init at first boot
{%- else %}
{%- set minion = pillar['salt']['minion'] %}

salt-minion-config:
  file.managed:
    - name: /etc/salt/minion.d/coop.conf
    - makedirs: True
    - mode: '0644'
    {#- The same lines the first boot writes (terraform/instances/cloud-init.yaml.tftpl), so
        a host's first highstate finds them in place. #}
    - contents: |
        # Managed by salt (salt/salt/minion.sls) from the topology; first written at first boot.
        id: {{ minion['id'] }}
        master: {{ minion['master'] }}
{%- if minion.get('master_finger') %}
        master_finger: '{{ minion['master_finger'] }}'
{%- endif %}

salt-minion-unit-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: salt-minion-unit

salt-minion-enabled:
  service.enabled:
    - name: salt-minion
    - require:
      - cmd: salt-minion-unit-reload

# A minion cannot restart itself in the middle of a run: it restarts once the run has returned.
salt-minion-restart:
  cmd.run:
    # In 5 s, from a transient systemd timer: after this run has sent its return (a restart
    # now would cut it off, and the run would read as "did not answer").
    - name: systemd-run --quiet --on-active=5 systemctl restart salt-minion
    - onchanges:
      - file: salt-minion-config
      - file: salt-minion-unit
{%- endif %}
