{#- The Jenkins master, as far as the packages allow: Jenkins LTS from the Jenkins apt repository
    (not in Debian), at the version lib/pins.yaml holds (the newest line that runs on Debian 12's
    Java 17), held there; the port and listen address from the topology; the setup wizard off and
    the admin account set at every start by a Groovy hook of Jenkins' core (init.groovy.d), so no
    plugin is downloaded at all.

    The repository's key is downloaded and checked against the full fingerprint pinned in
    lib/pins.yaml before apt is given it; apt then checks every index and package against it.

    The admin password reaches Jenkins through an EnvironmentFile (root, mode 600), never an
    `Environment=` line of the unit, which any user can read with `systemctl show`.

    An image bake: the repository and the packages (the bake keeps the package from starting
    Jenkins), nothing of the host's. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- import_yaml "lib/pins.yaml" as pins %}
{%- set home = '/var/lib/jenkins' %}
{%- set key = pins['jenkins_apt_key'] %}
{%- set repository = pins['jenkins_apt_repository'] %}
{%- set keyring = '/usr/share/keyrings/jenkins-keyring.asc' %}
{#- The primary key's fingerprint of a key file, from gpg's machine-readable listing; nothing
    unless the file holds exactly one primary key. #}
{%- set fingerprint_of = "gpg --batch --show-keys --with-colons %s 2>/dev/null | awk -F':' "
                         "'$1 == \"pub\" { pubs++ } $1 == \"fpr\" && fpr == \"\" { fpr = $10 }"
                         " END { if (pubs == 1) print fpr }'" %}

include:
  - common

jenkins-key-tools:
  pkg.installed:
    - pkgs: [gpg]
    - refresh: False

{#- Downloaded to a temporary folder and checked: exactly one key, with the pinned fingerprint.
    What apt gets is not the file as downloaded but that key as gpg exports it from a throwaway
    keyring (export-minimal: the key, its subkeys and its own signatures), so nothing else in the
    file can reach apt. Another key is never installed, and the state fails naming both. #}
jenkins-key:
  cmd.run:
    - name: |
        set -eu
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        export GNUPGHOME="$tmp/gnupg"
        mkdir -m 0700 "$GNUPGHOME"
        curl -fsSL --proto '=https' --tlsv1.2 -o "$tmp/key" '{{ key['url'] }}'
        got=$({{ fingerprint_of | format('"$tmp/key"') }})
        [ -n "$got" ] || got="(none: not exactly one key)"
        if [ "$got" != '{{ key['fingerprint'] }}' ]; then
          echo "{{ key['url'] }}: fingerprint $got, pinned {{ key['fingerprint'] }} (salt/lib/pins.yaml): not installed" >&2
          exit 1
        fi
        gpg --batch --quiet --import "$tmp/key"
        gpg --batch --armor --export --export-options export-minimal '{{ key['fingerprint'] }}' > "$tmp/minimal.asc"
        test -s "$tmp/minimal.asc"
        install -m 0644 "$tmp/minimal.asc" {{ keyring }}
    - unless: test "$({{ fingerprint_of | format(keyring) }})" = '{{ key['fingerprint'] }}'
    - require:
      - pkg: jenkins-key-tools

jenkins-repo:
  pkgrepo.managed:
    - name: deb [signed-by={{ keyring }}] {{ repository['url'] }} binary/
    - file: /etc/apt/sources.list.d/jenkins.list
    - aptkey: False
    - require:
      - cmd: jenkins-key
    - require_in:
      - pkg: jenkins-package

jenkins-packages:
  pkg.installed:
    - pkgs: [openjdk-17-jre-headless, fontconfig]
    - refresh: True

{#- Held at the pinned version (apt upgrades leave it), and only it: Java keeps its updates. #}
jenkins-package:
  pkg.installed:
    - name: jenkins
    - version: '{{ repository['version'] }}'
    - hold: True
    - refresh: True
    - require:
      - pkg: jenkins-packages
{%- if not bake %}
{%- set jenkins = pillar['jenkins'] %}
{%- set password = jenkins['admin_password'] %}
{#- systemd's EnvironmentFile: single quotes take the value as it is; a value with a single
    quote goes in double quotes, its backslashes and double quotes escaped. #}
{%- if "'" not in password %}
{%- set quoted = "'" ~ password ~ "'" %}
{%- else %}
{%- set quoted = '"' ~ password | replace('\\', '\\\\') | replace('"', '\\"') ~ '"' %}
{%- endif %}

{#- Jenkins' core runs every init.groovy.d script at each start: the admin account (its password
    from the environment, set from admin.env), no sign-up, nothing for anonymous users, no builds
    on the master, the URL it is reached at. No plugin. #}
jenkins-init:
  file.managed:
    - name: {{ home }}/init.groovy.d/coop.groovy
    - makedirs: True
    - mode: '0644'
    - contents: |
        // Managed by salt (salt/jenkins/master.sls) from the topology. Runs at every start.
        import hudson.security.FullControlOnceLoggedInAuthorizationStrategy
        import hudson.security.HudsonPrivateSecurityRealm
        import jenkins.model.Jenkins
        import jenkins.model.JenkinsLocationConfiguration

        def password = System.getenv('JENKINS_ADMIN_PASSWORD')
        if (!password) {
            throw new IllegalStateException('JENKINS_ADMIN_PASSWORD is not set: /etc/jenkins/admin.env')
        }
        def jenkins = Jenkins.get()
        def realm = new HudsonPrivateSecurityRealm(false)  // false: no sign-up
        realm.createAccount('admin', password)  // creates the account, or sets its password
        jenkins.setSecurityRealm(realm)
        def strategy = new FullControlOnceLoggedInAuthorizationStrategy()
        strategy.setAllowAnonymousRead(false)
        jenkins.setAuthorizationStrategy(strategy)
        jenkins.setNumExecutors(0)
        jenkins.setSystemMessage('coop-infra Jenkins on {{ pillar['coop']['fqdn'] }}')
        def location = JenkinsLocationConfiguration.get()
        location.setUrl('http://{{ jenkins['listen'] }}:{{ jenkins['port'] }}/')
        location.save()
        jenkins.save()

jenkins-admin-env:
  file.managed:
    - name: /etc/jenkins/admin.env
    - makedirs: True
    - mode: '0600'
    - user: root
    - group: root
    - show_changes: False
    - contents: |
        # Managed by salt (salt/jenkins). Read by systemd (root) for the jenkins unit only.
        JENKINS_ADMIN_PASSWORD={{ quoted }}

jenkins-environment:
  file.managed:
    - name: /etc/systemd/system/jenkins.service.d/coop.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/jenkins). No secret here: `systemctl show` prints these to anyone.
        [Service]
        Environment="JENKINS_LISTEN_ADDRESS={{ jenkins['listen'] }}"
        Environment="JENKINS_PORT={{ jenkins['port'] }}"
        Environment="JENKINS_HOME={{ home }}"
        Environment="JAVA_OPTS=-Djava.awt.headless=true -Djenkins.install.runSetupWizard=false"
        EnvironmentFile=/etc/jenkins/admin.env

jenkins-systemd-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: jenkins-environment
      - file: jenkins-admin-env
    - require_in:
      - service: jenkins-running

{{ daemon('jenkins', 'jenkins',
          watch=[{'file': 'jenkins-init'}, {'file': 'jenkins-environment'},
                 {'file': 'jenkins-admin-env'}],
          on_change='restart', host=jenkins['listen'], port=jenkins['port'],
          require=[{'pkg': 'jenkins-package'}]) }}
{%- endif %}
