{#- States that show secrets the way ours could: the registry's pull account as base64 in an
    auth.json diff (the web and jenkins-agent states write it so, with show_changes off), a JSON-
    escaped password in a file diff, a failing command that prints the password in clear, the
    pull password URL-quoted in a URL's credentials, and the database password as base64.
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

leaky-registry-url:
  file.managed:
    - name: {{ root }}/registry.url
    - contents: {{ ('https://deploy:' ~ (client['password'] | urlencode) ~ '@registry.example/') | json }}

leaky-db-b64:
  file.managed:
    - name: {{ root }}/db.b64
    - contents: {{ ('password_b64: ' ~ (pillar['database']['password'] | base64_encode)) | json }}
