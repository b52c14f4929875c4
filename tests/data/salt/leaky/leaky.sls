{#- States that show secrets the way ours could: the registry's pull account as base64 in an
    auth.json diff (the web and jenkins-agent states write it so, with show_changes off), a JSON-
    escaped password in a file diff, and a failing command that prints the password in clear.
    Recorded by record.sh (masterless salt-call); the expected scrubbing is in test_salt_units. #}
{%- set root = pillar['root'] %}
{%- set client = pillar['registry_client'] %}
leaky-auth:
  file.serialize:
    - name: {{ root }}/auth.json
    - serializer: json
    - dataset:
        auths:
          registry.example:
            auth: {{ salt['hashutil.base64_b64encode'](client['user'] ~ ':' ~ client['password']) | json }}

leaky-db-conf:
  file.managed:
    - name: {{ root }}/db.json
    - contents: {{ ('{"password": ' ~ (pillar['database']['password'] | json) ~ '}') | json }}

leaky-login:
  cmd.run:
    - name: {{ ("printf '%s\\n' 'login deploy:" ~ client['password'] ~ " refused'; exit 1") | json }}
