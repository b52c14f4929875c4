{#- A release of one app on a web host, blue/green. The `release/<environment>/<app>` assets apply
    this state with the release in the pillar (state.apply app pillar={"release": {...}}):

        release: {app: hello, digest: "sha256:...", sha: "<commit>", health_timeout_s: 30,
                  release_phase: true, web_state: highstate/web-staging}

    The release itself is a program: the state module salt/_states/coop_app.py (its docstring
    says each step), synced to the minions; this file only declares it. #}
{%- set release = pillar.get('release') %}
{%- if not release or not release.get('app') %}

app-release-in-pillar:
  test.fail_without_changes:
    - name: >-
        no release in the pillar: apply with
        pillar={"release": {"app": "<app>", "digest": "sha256:<64 hex digits>",
        "sha": "<the commit: 40 hex digits, or empty>"}}
{%- else %}

app-release:
  coop_app.released:
    - name: {{ release['app'] | string | json }}
    - digest: {{ release.get('digest') | string | json }}
    - sha: {{ (release.get('sha') or '') | string | json }}
    - health_timeout_s: {{ release.get('health_timeout_s', 30) | int }}
    - release_phase: {{ release.get('release_phase', True) | json }}
    - web_state: {{ (release.get('web_state') or '') | string | json }}
{%- endif %}
