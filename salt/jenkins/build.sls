{#- One image build on a jenkins agent, when no Jenkins is configured: `app_image/<app>` applies
    this state on a host with the jenkins-agent role, with the build in the pillar:

        build: {app: hello, repo: "git://...", sha: "<commit>", branch: main,
                image: "<registry host:port>/hello", base_image: "<registry>/coop-base@sha256:..."}

    It runs the `app-image` job's own script (salt://jenkins/files/build-app-image.sh, which
    jenkins/build-app-image.sh links to) as the Jenkins job would, in a folder of the build's own
    under the agent's home, with what the `jenkins.agent` state gave the agent: podman (crun),
    the registry's CA (/etc/containers/certs.d) and the push account (the agent's auth file; no
    password is in the pillar, the environment or a command line). The script prints the pushed
    digest (`PUSHED_DIGEST=sha256:...`); the build's folder goes afterwards.

    The values reach the script as environment variables, never spliced into a command; they are
    checked here too (the app a DNS label, the commit 40 hex digits, the branch a git ref name). #}
{%- set build = pillar.get('build', {}) %}
{%- set client = pillar.get('registry_client', {}) %}
{%- set home = '/var/lib/jenkins' %}
{%- set auth = home ~ '/.config/containers/auth.json' %}
{%- set app = build.get('app') or '' %}
{%- set sha = build.get('sha') or '' %}
{%- set branch = build.get('branch') or '' %}
{%- set image = build.get('image') or '' %}
{%- if not (app | string | regex_match('^([a-z0-9][a-z0-9-]{0,62})$')) or app | length > 63
      or not (sha | string | regex_match('^([0-9a-f]{40})$')) or sha | length != 40
      or not (branch | string | regex_match('^([A-Za-z0-9._/-]+)$'))
      or not build.get('repo') or not image %}

jenkins-build-in-pillar:
  test.fail_without_changes:
    - name: >-
        no build in the pillar, or not one: apply with pillar={"build": {"app": "<app>",
        "repo": "<git URL>", "sha": "<40 hex digits>", "branch": "<branch>",
        "image": "<registry>/<app>"}}
{%- elif not client %}

jenkins-build-registry:
  test.fail_without_changes:
    - name: >-
        this host has no registry to push to (no registry_client in its pillar): is it a
        jenkins agent of a topology with a docker-registry host?
{%- else %}
{%- set workdir = home ~ '/builds/' ~ app ~ '-' ~ sha[:12] %}

jenkins-build-{{ app }}-workdir:
  file.directory:
    - name: {{ workdir | json }}
    - makedirs: True
    - mode: '0700'

jenkins-build-{{ app }}-standard:
  file.managed:
    - name: {{ (workdir ~ '/standard_build.py') | json }}
    - source: salt://jenkins/files/standard_build.py
    - mode: '0644'
    - require:
      - file: jenkins-build-{{ app }}-workdir

jenkins-build-{{ app }}:
  cmd.script:
    - source: salt://jenkins/files/build-app-image.sh
    - shell: /bin/bash
    - cwd: {{ workdir | json }}
    - env:
        APP: {{ app | json }}
        REPO: {{ build['repo'] | string | json }}
        SHA: {{ sha | json }}
        BRANCH: {{ branch | json }}
        IMAGE: {{ image | string | json }}
        BASE_IMAGE: {{ build.get('base_image', '') | string | json }}
        # The standard build (no Dockerfile): the runtimes' base images, and the caches it
        # installs from (the builds' only network: salt/common/firewall.sls).
        RUNTIME_IMAGES: {{ build.get('runtime_images', '') | string | json }}
        STANDARD_BUILD: {{ (workdir ~ '/standard_build.py') | json }}
        NPM_REGISTRY: {{ (pillar.get('jenkins_agent', {}).get('npm_registry') or '') | json }}
        PIP_INDEX_URL: {{ (pillar.get('jenkins_agent', {}).get('pip_index') or '') | json }}
        REGISTRY_AUTH_FILE: {{ auth | json }}
        # Podman reads the agent's settings (jenkins.agent: crun) from its default place, with
        # the drop-ins of containers.conf.d (CONTAINERS_CONF would make it read that file only).
    - require:
      - file: jenkins-build-{{ app }}-standard

jenkins-build-{{ app }}-cleanup:
  file.absent:
    - name: {{ workdir | json }}
    - order: last
{%- endif %}
