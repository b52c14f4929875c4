{#- Every host's firewall: the ports the role catalogue guards (`only_from`, the pillar's
    `firewall.rules`) take new connections only from the addresses listed there; every other
    new connection to them is refused (a TCP reset). The cloud's metadata service
    (169.254.169.254, which serves the server's user-data and so its salt keys) answers root
    alone: other local users and forwarded traffic (app containers) are refused. Nothing else is
    filtered here: the table is the project's own (`inet coop_firewall`), loaded by
    coop-firewall.service, and leaves every other table (podman's, for one) alone. An image
    bake: the package and the unit. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}

firewall-packages:
  pkg.installed:
    - pkgs: [nftables]
    - refresh: False

firewall-unit:
  file.managed:
    - name: /etc/systemd/system/coop-firewall.service
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/common/firewall.sls): the host's guarded ports.
        # Early, as Debian's nftables.service: no default dependencies (which would order it
        # after sysinit.target, and so in a cycle with cloud-init and networking).
        [Unit]
        Description=coop-infra firewall (the role catalogue's only_from)
        DefaultDependencies=no
        Wants=network-pre.target
        Before=network-pre.target shutdown.target
        Conflicts=shutdown.target
        ConditionPathExists=/etc/coop/firewall.nft

        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/sbin/nft -f /etc/coop/firewall.nft
        # the file replaces the table in one transaction: a change never leaves the ports open
        ExecReload=/usr/sbin/nft -f /etc/coop/firewall.nft
        ExecStop=/usr/sbin/nft delete table inet coop_firewall

        [Install]
        WantedBy=multi-user.target
{%- if not bake %}

firewall-unit-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: firewall-unit

firewall-rules:
  file.managed:
    - name: /etc/coop/firewall.nft
    - source: salt://common/files/firewall.nft.jinja
    - template: jinja
    - mode: '0644'
    - makedirs: True
    - check_cmd: /usr/sbin/nft -c -f
    - require:
      - pkg: firewall-packages

{{ daemon('firewall', 'coop-firewall', watch=[{'file': 'firewall-rules'}], on_change='reload',
          require=[{'cmd': 'firewall-unit-reload'}]) }}
{%- endif %}
