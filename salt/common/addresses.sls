{#- A server's service addresses: the address plan's addresses beyond its primary (the registry's
    10.N.9.1, the DNS server's 10.N.3.1, ...). Terraform puts them on the server's port as extra
    fixed IPs (terraform/instances), but DHCP gives the guest its primary address only: this adds
    the others, as /32s on the interface that holds the primary, now and at every boot (a systemd
    unit), and removes /32s of the private network that the plan no longer gives the host.
    net.ipv4.ip_nonlocal_bind lets a service bind its address even before the unit has run.

    Nothing in an image bake (no host data there). Included by `common`. #}
{%- from "lib/site.jinja" import bake with context %}
{%- if not bake %}
{%- set coop = pillar['coop'] %}
{%- set primary = coop['address'] %}
{%- set extra = coop['addresses'].values() | reject('equalto', primary) | unique | sort | list %}
{%- set net_prefix = coop['network'].split('.')[:2] | join('.') ~ '.' %}
{%- set script = '/usr/local/sbin/coop-service-addresses' %}
{%- set unit = 'coop-service-addresses.service' %}

common-addresses-nonlocal-bind:
  file.managed:
    - name: /etc/sysctl.d/60-coop-nonlocal-bind.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/common/addresses.sls): services bind their planned address even
        # before coop-service-addresses has added it.
        net.ipv4.ip_nonlocal_bind = 1
  cmd.run:
    - name: sysctl -q -p /etc/sysctl.d/60-coop-nonlocal-bind.conf
    # Already in force (set at the instance's creation, or by an earlier run): nothing to do;
    # where /proc/sys is read-only to the guest, writing it again would fail.
    - unless: test "$(sysctl -n net.ipv4.ip_nonlocal_bind)" = 1
    - onchanges:
      - file: common-addresses-nonlocal-bind

common-addresses-script:
  file.managed:
    - name: {{ script }}
    - makedirs: True
    - mode: '0755'
    - contents: |
        #!/bin/sh
        # Managed by salt (salt/common/addresses.sls) from the topology's address plan:
        # {{ coop['host'] }}'s service addresses, beside its primary {{ primary }} (from DHCP).
        # With --check: change nothing, exit 1 if something is to do.
        set -eu
        primary={{ primary }}
        want=" {{ extra | join(' ') }} "
        check=${1:-}
        dev=
        for try in $(seq 60); do
          dev=$(ip -o -4 addr show to "$primary/32" | awk '{print $2; exit}')
          if [ -n "$dev" ] || [ -n "$check" ]; then break; fi
          sleep 1
        done
        if [ -z "$dev" ]; then
          echo "coop-service-addresses: no interface holds $primary" >&2
          exit 1
        fi
        # the /32s of the private network on that interface: the ones this script adds
        have=" $(ip -o -4 addr show dev "$dev" | awk '$4 ~ /^{{ net_prefix | replace('.', '\\.') }}.*\/32$/ {sub(/\/32$/, "", $4); print $4}' | tr '\n' ' ') "
        todo=0
        for address in $want; do
          case "$have" in *" $address "*) continue ;; esac
          todo=1
          if [ -z "$check" ]; then ip -4 addr add "$address/32" dev "$dev"; fi
        done
        for address in $have; do
          case "$want" in *" $address "*) continue ;; esac
          todo=1
          if [ -z "$check" ]; then ip -4 addr del "$address/32" dev "$dev"; fi
        done
        if [ -n "$check" ]; then exit "$todo"; fi

common-addresses-unit:
  file.managed:
    - name: /etc/systemd/system/{{ unit }}
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/common/addresses.sls).
        [Unit]
        Description=coop-infra service addresses from the address plan
        Wants=network-online.target
        After=network-online.target
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/local/sbin/coop-service-addresses
        [Install]
        WantedBy=multi-user.target
  service.enabled:
    - name: {{ unit }}
    - require:
      - file: common-addresses-unit
      - file: common-addresses-script

common-addresses-up:
  cmd.run:
    - name: {{ script }}
    - unless: {{ script }} --check
    - require:
      - file: common-addresses-script
      - cmd: common-addresses-nonlocal-bind
{%- endif %}
