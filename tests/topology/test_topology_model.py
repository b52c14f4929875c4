"""The topology model and its address plan: plain Python, no Dagster."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra_assets.topology.model import App, TopologyError, address_plan, load_topology


def problems_of(path) -> list[str]:
    with pytest.raises(TopologyError) as err:
        load_topology(path)
    return [p.render(str(path)) for p in err.value.problems]


# --- the address plan -------------------------------------------------------------------------


def test_the_coop_address_plan_matches_its_table(repo_root):
    plan = address_plan(load_topology(repo_root / "topology.yaml"))
    by_role = {(a.host, a.role): a.address for a in plan.addresses}
    assert by_role[("web-staging-1", "web-staging")] == "10.100.5.1"
    assert plan.primary("support-1").address == "10.100.1.1"
    assert {a.address for a in plan.for_host("support-1")} == {
        "10.100.1.1",
        "10.100.3.1",
        "10.100.9.1",
        "10.100.10.1",
        "10.100.11.1",
        "10.100.12.1",
    }
    # The table of types, one host of each, instance 1 in nz-por-1 (100).
    assert by_role[("support-2", "salt-minion")] == "10.100.2.1"
    assert by_role[("support-2", "jenkins-agent")] == "10.100.4.1"
    assert by_role[("web-production-1", "web-production")] == "10.100.6.1"
    assert by_role[("pg-staging-1", "postgres-staging")] == "10.100.7.1"
    assert by_role[("pg-production-1", "postgres-production")] == "10.100.8.1"
    assert plan.collisions() == {}


def test_dns_has_no_address_and_every_host_has_a_primary(repo_root):
    topo = load_topology(repo_root / "topology.yaml")
    plan = address_plan(topo)
    assert not [a for a in plan.addresses if a.role == "dns"]
    assert sorted(a.host for a in plan.addresses if a.primary) == sorted(topo.hosts)


def test_dnsmasq_hosts_file_names_hosts_and_services(repo_root):
    plan = address_plan(load_topology(repo_root / "topology.yaml"))
    lines = {
        line.split("\t")[0]: line.split("\t")[1].split()
        for line in plan.dnsmasq_hosts().splitlines()
        if not line.startswith("#")
    }
    assert lines["10.100.1.1"][0] == "support-1.nz-por-1.coop.internal"
    assert "docker-registry.nz-por-1.coop.internal" in lines["10.100.9.1"]
    assert "npm-cache-1.nz-por-1.coop.internal" in lines["10.100.10.1"]
    # a host named like its role-instance is listed once, not twice
    assert lines["10.100.5.1"].count("web-staging-1.nz-por-1.coop.internal") == 1


def test_two_hosts_of_one_role_share_the_role_name_round_robin(write_topology):
    def edit(d):
        d["hosts"]["web-staging-2"] = {
            "location": "nz-por-1",
            "instance": 2,
            "roles": ["web-staging"],
        }

    plan = address_plan(load_topology(write_topology(edit=edit)))
    text = plan.dnsmasq_hosts()
    assert (
        "10.100.5.2\tweb-staging-2.nz-por-1.coop.internal web-staging.nz-por-1.coop.internal"
        in text
    )
    assert text.count(" web-staging.nz-por-1.coop.internal") == 2


def test_the_lab_topology_is_valid(repo_root):
    topo = load_topology(repo_root / "topology.lab.yaml")
    assert all(loc.is_lab for loc in topo.locations.values())
    assert topo.salt_master() == "support-1"
    assert "hello" in topo.apps


# --- every bad input: the file, the line, the key path and what is wrong -----------------------

GOOD = """\
locations:
  nz-por-1: {number: 100, cloud: catalyst}
types:
  salt-master: 1
  web-staging: 5
hosts:
  support-1: {location: nz-por-1, instance: 1, roles: [salt-master, dns]}
  web-staging-1: {location: nz-por-1, instance: 1, roles: [web-staging]}
apps:
  hello: {repo: /srv/git/hello.git, branch: main, port: 8000, health: /health}
"""


def test_the_minimal_file_is_valid(write_topology):
    topo = load_topology(write_topology(GOOD))
    assert list(topo.hosts) == ["support-1", "web-staging-1"]


@pytest.mark.parametrize("path", ["/", "/health", "/health?full=1&x=2", "/a/b.c_d~e-f%20g"])
def test_a_health_path_may_have_a_query_and_percent_escapes(write_topology, path):
    topo = load_topology(write_topology(GOOD.replace("health: /health", f'health: "{path}"')))
    assert topo.apps["hello"].health == path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a YAML syntax error, with its line
        ("  salt-master: 1\n", "  salt-master: [1\n", ":5: YAML syntax error"),
        # a value YAML cannot convert, with its line; an alias that holds itself
        (
            "hello: {repo",
            "hello: {env: {CUTOFF: 2024-02-30}, repo",
            ":10: a value YAML takes for a date or a number cannot be read (day is out of range"
            " for month): quote it",
        ),
        ("apps:", "loop: &x [*x]\napps:", ": an alias refers to the node that holds it"),
        # an unknown key, with a suggestion
        (
            "instance: 1, roles: [web",
            "instanse: 1, roles: [web",
            ":8: hosts.web-staging-1.instanse: unknown key 'instanse' (did you mean 'instance'?)",
        ),
        ("locations:", "colour: red\nlocations:", ":1: colour: unknown key 'colour'"),
        # a wrong type
        (
            "web-staging-1: {location: nz-por-1, instance: 1,",
            "web-staging-1: {location: nz-por-1, instance: one,",
            ":8: hosts.web-staging-1.instance: must be a whole number, not 'one' (a string)",
        ),
        (
            "roles: [web-staging]",
            "roles: web-staging",
            ":8: hosts.web-staging-1.roles: must be a list, not 'web-staging' (a string)",
        ),
        ("web-staging: 5", "web-staging: five", ":5: types.web-staging: must be a whole number"),
        # numbers out of range
        (
            "number: 100",
            "number: 0",
            ":2: locations.nz-por-1.number: 0 is out of range: must be 1..254",
        ),
        ("number: 100", "number: 255", ":2: locations.nz-por-1.number: 255 is out of range"),
        ("web-staging: 5", "web-staging: 300", ":5: types.web-staging: 300 is out of range"),
        (
            "web-staging-1: {location: nz-por-1, instance: 1,",
            "web-staging-1: {location: nz-por-1, instance: 255,",
            ":8: hosts.web-staging-1.instance: 255 is out of range: must be 1..254",
        ),
        # two locations, or two types, with one number
        (
            "  nz-por-1: {number: 100, cloud: catalyst}\n",
            "  nz-por-1: {number: 100, cloud: catalyst}\n  nz-akl-1: {number: 100, cloud: catalyst}\n",
            ":3: locations.nz-akl-1.number: number 100 is taken by location 'nz-por-1'",
        ),
        (
            "  web-staging: 5\n",
            "  web-staging: 5\n  web-production: 5\n",
            ":6: types.web-production: number 5 is taken by type 'web-staging'",
        ),
        # two hosts with one address
        (
            "apps:",
            "  web-staging-2: {location: nz-por-1, instance: 1, roles: [web-staging]}\napps:",
            ":9: hosts.web-staging-2.instance: address 10.100.5.1 (web-staging) is already"
            " web-staging-1's",
        ),
        # references to an unknown location or role
        (
            "web-staging-1: {location: nz-por-1",
            "web-staging-1: {location: nz-por-2",
            ":8: hosts.web-staging-1.location: unknown location 'nz-por-2' (did you mean 'nz-por-1'?)",
        ),
        (
            "roles: [web-staging]",
            "roles: [web-stagin]",
            ":8: hosts.web-staging-1.roles[0]: unknown role 'web-stagin' (did you mean 'web-staging'?)",
        ),
        # an app with a bad port, branch or health path
        (
            "port: 8000",
            "port: 70000",
            ":10: apps.hello.port: 70000 is out of range: must be 1..65535",
        ),
        ("port: 8000", "port: 0", ":10: apps.hello.port: 0 is out of range"),
        ("port: 8000", "port: '8000'", ":10: apps.hello.port: must be a whole number"),
        (
            "branch: main",
            "branch: 'a b'",
            ":10: apps.hello.branch: 'a b' is not a valid git branch",
        ),
        (
            "branch: main",
            "branch: feature..x",
            ":10: apps.hello.branch: 'feature..x' is not a valid",
        ),
        ("branch: main", "branch: x.lock", ":10: apps.hello.branch: 'x.lock' is not a valid"),
        ("health: /health", "health: health", ":10: apps.hello.health: 'health' is not a URL path"),
        (
            "health: /health",
            "health: /he alth",
            ":10: apps.hello.health: '/he alth' is not a URL path",
        ),
        # shell characters: the health path reaches a command line on the web hosts
        *(
            ("health: /health", f'health: "{path}"', f":10: apps.hello.health: {path!r} is not a")
            for path in ["/a;b", "/h$(id)", "/it's", "/a`id`", "/a|b", "/a>b", "/a#b", "/a b"]
        ),
        ("health: /health", 'health: "/a\\nb"', ":10: apps.hello.health: '/a\\nb' is not a URL"),
        # a missing required field
        ("repo: /srv/git/hello.git, ", "", ":10: apps.hello.repo: missing required key 'repo'"),
        (
            "web-staging-1: {location: nz-por-1, ",
            "web-staging-1: {",
            ":8: hosts.web-staging-1.location: missing required key 'location'",
        ),
        ("types:\n  salt-master: 1\n  web-staging: 5\n", "", "types: missing required key 'types'"),
        # names that cannot be DNS labels or minion ids
        ("  web-staging-1:", "  Web_1:", ":8: hosts.Web_1: 'Web_1' is not a valid name"),
        # a second salt master, none at all
        (
            "roles: [web-staging]",
            "roles: [salt-master]",
            ":8: hosts.web-staging-1.roles: a second salt master",
        ),
        (
            "roles: [salt-master, dns]",
            "roles: [dns]",
            ":7: hosts.support-1.roles: no role with an address type",
        ),
        # two apps whose releases would share a loopback port (blue and green: port, port + 1)
        (
            "health: /health}\n",
            "health: /health}\n  shop: {repo: /srv/git/shop.git, port: 8001}\n",
            ":11: apps.shop.port: 8001: its releases listen on 8001 and 8002 (blue and green),"
            " and 8001 is app 'hello''s: give apps ports at least two apart",
        ),
        # settings: names, the release's own, both env and secret, one per environment
        (
            "health: /health}",
            "health: /health, env: {PORT: 1}}",
            ":10: apps.hello.env.PORT: PORT is set by each release",
        ),
        (
            "health: /health}",
            "health: /health, env: {1X: a}}",
            ":10: apps.hello.env.1X: '1X' is not an environment variable's name",
        ),
        (
            "health: /health}",
            "health: /health, env: {A: {prod: 1}}}",
            ":10: apps.hello.env.A: unknown environment 'prod': use staging or production",
        ),
        (
            "health: /health}",
            "health: /health, env: {A: x}, secrets: [A]}",
            ":10: apps.hello: A: in both env and secrets; a setting is one or the other",
        ),
        (
            "health: /health}",
            "health: /health, database: true, secrets: [DATABASE_URL]}",
            ":10: apps.hello: DATABASE_URL is set by `database: true`",
        ),
        # kinds: a web app listens on a port; a worker has no HTTP at all
        (
            "health: /health}\n",
            "health: /health}\n  bot: {repo: /srv/git/bot.git}\n",
            ":11: apps.bot: a web app needs `port`",
        ),
        (
            "health: /health}\n",
            "health: /health}\n  bot: {repo: /srv/git/bot.git, kind: worker, port: 9000}\n",
            ":11: apps.bot: a worker has no HTTP: leave out port",
        ),
        (
            "health: /health}\n",
            "health: /health}\n  bot: {repo: /srv/git/bot.git, kind: cron}\n",
            ":11: apps.bot.kind: Input should be 'web' or 'worker'",
        ),
        (
            "health: /health}",
            "health: /health, up_s: 5}",
            ":10: apps.hello: up_s is for workers",
        ),
        # a key given twice, which YAML alone would silently drop
        (
            "apps:",
            "  web-staging-1: {location: nz-por-1, instance: 2, roles: [web-staging]}\napps:",
            ":9: hosts.web-staging-1: duplicate key: already given on line 8",
        ),
    ],
)
def test_bad_input_is_reported_with_file_line_and_key(write_topology, old, new, expected):
    assert old in GOOD, old
    path = write_topology(GOOD.replace(old, new, 1))
    problems = problems_of(path)
    assert any(p.startswith(str(path)) and expected in p for p in problems), problems


def test_a_worker_needs_no_port_and_takes_the_ports_of_no_one(write_topology):
    path = write_topology(GOOD.replace(
        "health: /health}\n",
        "health: /health}\n  bot: {repo: /srv/git/bot.git, kind: worker, up_s: 20}\n", 1))  # fmt: skip
    bot = load_topology(path).apps["bot"]
    assert (bot.kind, bot.port, bot.up_s) == ("worker", None, 20)


def test_a_topology_with_hosts_needs_one_salt_master(write_topology):
    # Every host is a minion of the one master (DESIGN.md): without one, salt assets and
    # `infra lab status` would have nothing to talk to.
    path = write_topology(
        GOOD.replace("instance: 1, roles: [salt-master, dns]", "instance: 2, roles: [web-staging]")
    )
    problems = problems_of(path)
    assert problems == [
        f"{path}:6: hosts: no host has the role salt-master: every host is a minion of one;"
        " give one host the role salt-master"
    ]
    # No type salt-master either: the message says to add it too.
    text = GOOD.replace("  salt-master: 1\n", "").replace("[salt-master, dns]", "[dns]")
    problems = problems_of(write_topology(text))
    assert any(
        "hosts: no host has the role salt-master" in p
        and "(and the type salt-master under 'types')" in p
        for p in problems
    ), problems


def test_a_topology_mixing_this_machine_and_a_cloud_is_refused(write_topology):
    text = GOOD.replace(
        "  nz-por-1: {number: 100, cloud: catalyst}\n",
        "  nz-por-1: {number: 100, cloud: catalyst}\n  lab: {number: 101, cloud: lab}\n",
    )
    path = write_topology(text)
    assert problems_of(path) == [
        f"{path}:3: locations.lab.cloud: 'lab' (this machine) cannot be mixed with catalyst"
        " in one topology: keep this machine's locations in a topology of their own"
        " (topology.lab.yaml)"
    ]
    # The process-based local site is gone: `cloud: local` says so and names the lab.
    gone = problems_of(write_topology(GOOD.replace("cloud: catalyst", "cloud: local")))
    assert gone == [
        f"{path}:2: locations.nz-por-1.cloud: 'local' (the process-based local site) is gone:"
        " this machine as a cloud is `cloud: lab` (topology.lab.yaml; `infra lab up`)"
    ]
    # Two clouds are fine, and so is a topology of lab locations only.
    load_topology(write_topology(text.replace("cloud: lab", "cloud: other")))
    load_topology(write_topology(text.replace("cloud: catalyst", "cloud: lab")))


def test_every_bad_domain_is_reported_with_its_own_key_path(write_topology):
    text = GOOD.replace(
        "health: /health}",
        "health: /health,\n    domains: {staging: bad_name, production: also bad, qa: x.coop}}",
    )
    path = write_topology(text)
    problems = problems_of(path)
    assert sorted(problems) == [
        f"{path}:11: apps.hello.domains.production: 'also bad' is not a domain name",
        f"{path}:11: apps.hello.domains.qa: unknown environment 'qa': use staging or production",
        f"{path}:11: apps.hello.domains.staging: 'bad_name' is not a domain name",
    ]


def test_the_acme_block_defaults_to_let_s_encrypt_and_refuses_what_is_not_one(write_topology):
    assert load_topology(write_topology(GOOD)).acme.directory == (
        "https://acme-v02.api.letsencrypt.org/directory"
    )
    own = GOOD + "acme: {directory: 'https://acme.example.org:14000/dir', email: ops@coop.nz}\n"
    acme = load_topology(write_topology(own)).acme
    assert (acme.directory, acme.email) == ("https://acme.example.org:14000/dir", "ops@coop.nz")
    lines = len(GOOD.splitlines()) + 1
    path = write_topology(GOOD + "acme: {directory: 'http://acme.example.org/dir', email: 'ops'}\n")
    assert sorted(problems_of(path)) == [
        f"{path}:{lines}: acme.directory: 'http://acme.example.org/dir' is not an ACME directory"
        " URL: https://<host>[:port]/<path>, such as Let's Encrypt's"
        " https://acme-v02.api.letsencrypt.org/directory",
        f"{path}:{lines}: acme.email: 'ops' is not an email address",
    ]
    path = write_topology(GOOD + "acme: letsencrypt\n")
    assert problems_of(path) == [
        f"{path}:{lines}: acme: must be a mapping (directory, email), not 'letsencrypt' (a string)"
    ]


def test_a_host_named_like_a_role_is_refused(write_topology):
    # `web-staging.<location>.<domain>` is the round-robin name of the role's hosts: a host of
    # that name would silently lose its own DNS name.
    path = write_topology(GOOD.replace("  web-staging-1: {", "  web-staging: {"))
    assert problems_of(path) == [
        f"{path}:8: hosts.web-staging: a host named like the role 'web-staging':"
        " <web-staging>.<location>.<domain> is the DNS name of all the role's hosts (round"
        " robin), so the host would lose its own; rename the host (e.g. web-staging-1)"
    ]
    # An untyped role has no DNS name: a host may be called `dns`.
    load_topology(write_topology(GOOD.replace("  web-staging-1: {", "  dns: {")))


def test_an_empty_file_is_an_error(write_topology):
    for text in ("", "\n\n", "# only a comment\n", "~\n"):
        path = write_topology(text)
        assert problems_of(path) == [
            f"{path}: the file is empty: it needs the keys locations,"
            " types, hosts (and apps); see docs/DESIGN.md"
        ]


def test_a_file_that_is_not_a_mapping_is_an_error(write_topology):
    path = write_topology("- just\n- a list\n")
    assert "the file must be a mapping" in problems_of(path)[0]


def test_a_missing_file_is_an_error(tmp_path):
    assert problems_of(tmp_path / "nope.yaml") == [
        f"{tmp_path / 'nope.yaml'}: no such file: pass the topology file's path"
    ]


def test_every_problem_in_the_file_is_reported_at_once(write_topology):
    text = (
        GOOD.replace("number: 100", "number: 300")
        .replace(
            "web-staging-1: {location: nz-por-1, instance: 1,",
            "web-staging-1: {location: nowhere, instance: x,",
        )
        .replace("port: 8000", "port: -1")
        .replace("health: /health", "health: nope")
    )
    problems = problems_of(write_topology(text))
    wanted = [
        "locations.nz-por-1.number",
        "hosts.web-staging-1.location",
        "hosts.web-staging-1.instance",
        "apps.hello.port",
        "apps.hello.health",
    ]
    for key in wanted:
        assert any(f": {key}: " in p for p in problems), (key, problems)
    assert len(problems) == len(wanted), problems


def test_problems_come_in_file_order(write_topology):
    text = GOOD.replace("port: 8000", "port: 0").replace("number: 100", "number: 0")
    with pytest.raises(TopologyError) as err:
        load_topology(write_topology(text))
    lines = [p.line for p in err.value.problems]
    assert lines == sorted(lines) and lines[0] == 2


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  web-staging-1:",
            '  "web-staging-1\\n":',
            ":8: hosts.'web-staging-1\\n': 'web-staging-1\\n' is not a valid name",
        ),
        (
            "  nz-por-1: {",
            '  "nz-por-1\\n": {',
            ":2: locations.'nz-por-1\\n': 'nz-por-1\\n' is not a valid name",
        ),
        (
            "  web-staging: 5",
            '  "web-staging\\n": 5',
            ":5: types.'web-staging\\n': 'web-staging\\n' is not a valid name",
        ),
        ("  hello: {", '  "hello\\n": {', ":10: apps.'hello\\n': 'hello\\n' is not a valid name"),
        (
            "health: /health}",
            'health: /health, domains: {staging: "hello.coop.nz\\n"}}',
            ":10: apps.hello.domains.staging: 'hello.coop.nz\\n' is not a domain name",
        ),
        (
            "locations:",
            'domain: "coop.internal\\n"\nlocations:',
            ":1: domain: 'coop.internal\\n' is not a domain name",
        ),
    ],
)
def test_a_name_with_a_trailing_newline_is_refused(write_topology, old, new, expected):
    # `$` matches before a final newline: such a name would pass and reach top.sls, cloud-init
    # and nginx. The problem names the key, the newline shown escaped on the one line.
    assert old in GOOD, old
    path = write_topology(GOOD.replace(old, new, 1))
    problems = problems_of(path)
    assert any(p.startswith(str(path)) and expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("repo", "shown", "secrets"),
    [
        (
            "https://bob:s3cr3t-token@git.example.org/a.git",
            "https://bob:***@git.example.org/a.git",
            ["s3cr3t-token"],
        ),
        # URL-quoted: neither the text as written nor what git decodes it to is shown
        (
            "https://bob:s3cr%40t%3Atoken@git.example.org:8443/a.git",
            "https://bob:***@git.example.org:8443/a.git",
            ["s3cr%40t%3Atoken", "s3cr@t:token"],
        ),
        (
            "https://:ghp_t0ken@github.com/coop/a.git",
            "https://:***@github.com/coop/a.git",
            ["ghp_t0ken"],
        ),
        (  # a token as the user name (GitHub and GitLab take it so): no password, all secret
            "https://ghp_t0kenT0ken@github.com/coop/a.git",
            "https://***@github.com/coop/a.git",
            ["ghp_t0kenT0ken"],
        ),
        (
            "https://glpat-Xy12zz@gitlab.example.org/coop/a.git",
            "https://***@gitlab.example.org/coop/a.git",
            ["glpat-Xy12zz"],
        ),
        (  # GitHub's old tokens: 40 hex digits, no prefix
            "https://0123456789abcdef0123456789abcdef01234567@github.com/coop/a.git",
            "https://***@github.com/coop/a.git",
            ["0123456789abcdef0123456789abcdef01234567"],
        ),
        (
            "ssh://git:hunter22@git.example.org/a.git",
            "ssh://git:***@git.example.org/a.git",
            ["hunter22"],
        ),
        (
            "bob:hunter22@git.example.org:coop/a.git",
            "bob:***@git.example.org:coop/a.git",
            ["hunter22"],
        ),
    ],
)
def test_a_repo_url_with_a_password_is_refused_without_showing_it(
    write_topology, repo, shown, secrets
):
    # A token in topology.yaml is in git, and would reach logs, metadata and the image's
    # source label. The problem names the key and what to do, with the password as ***.
    path = write_topology(GOOD.replace("repo: /srv/git/hello.git", f'repo: "{repo}"'))
    with pytest.raises(TopologyError) as err:
        load_topology(path)
    [problem] = [p.render(str(path)) for p in err.value.problems]
    assert problem.startswith(f"{path}:10: apps.hello.repo: {shown!r} holds a password or token")
    assert "credentials never belong in the topology, which is kept in git" in problem
    assert "ssh://git@host/org/app.git" in problem and "credential helper" in problem
    everything = [str(err.value), repr(err.value), json.dumps(err.value.as_json())]
    for secret in secrets:
        assert not [text for text in everything if secret in text], secret


def test_the_model_s_own_errors_do_not_show_a_repo_password():
    # An App made in code (not through load_topology): pydantic's message leaves the value out.
    with pytest.raises(ValidationError) as err:
        App(repo="https://bob:s3cr3t-token@git.example.org/a.git", port=8000)
    assert "holds a password or token" in str(err.value)
    assert "s3cr3t-token" not in str(err.value) and "s3cr3t-token" not in repr(err.value)


@pytest.mark.parametrize(
    "repo",
    [
        "ssh://git@git.example.org/coop/a.git",
        "ssh://git@git.example.org:2222/coop/a.git",
        "git@git.example.org:coop/app.git",
        "https://git.example.org/coop/a.git",
        "https://bob@git.example.org/coop/a.git",  # a user alone: the credential helper's key
        "https://ana-maria-kowalczyk-smith@git.example.org/coop/a.git",  # a long name, no token
        "https://bot2@git.example.org/coop/a.git",
        "https://bob:@git.example.org/coop/a.git",  # an empty password holds nothing
        "https://git.example.org:8443/coop/a.git?ref=a:b@c",  # an @ after the host is no user
        "/srv/git/hello.git",
        "git/hello.git",
        "/srv/git/a:b@c/hello.git",  # a path is never a URL, whatever it holds
    ],
)
def test_a_repo_url_without_a_password_is_accepted(write_topology, repo):
    path = write_topology(GOOD.replace("repo: /srv/git/hello.git", f'repo: "{repo}"'))
    assert load_topology(path).apps["hello"].repo == repo


NO_DAGSTER = """
import importlib.abc, json, sys

class NoDagster(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].startswith("dagster"):
            raise ImportError(f"{name} imported by the model")

sys.meta_path.insert(0, NoDagster())
from infra_assets.topology.model import address_plan, load_topology

topo = load_topology(sys.argv[1])
plan = address_plan(topo)
support = [a.address for a in plan.for_host("support-1")]
print(json.dumps({"master": topo.salt_master(), "support-1": support}))
"""


def test_the_model_imports_and_works_without_dagster(repo_root):
    """DESIGN: the topology model is plain Python. In a fresh interpreter where importing
    anything named dagster* fails, it loads the co-op's topology and plans its addresses."""
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", NO_DAGSTER, str(repo_root / "topology.yaml")],
        cwd=repo_root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo_root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    plan = address_plan(load_topology(repo_root / "topology.yaml"))
    assert json.loads(run.stdout) == {
        "master": "support-1",
        "support-1": [a.address for a in plan.for_host("support-1")],
    }


def test_a_topology_keeps_the_file_and_text_it_was_read_from(tmp_path, monkeypatch):
    """What a site hands on (the Dagster host's copy, the lab's git exports) is the text read,
    not the file read again; a topology stored before it kept them falls back to the file
    Dagster works on."""
    source = Path(__file__).resolve().parents[2] / "topology.lab.yaml"
    copy = tmp_path / "topology.yaml"
    copy.write_text(source.read_text())
    topo = load_topology(copy)
    copy.write_text("# changed after the read\n")
    assert topo.source() == (copy, source.read_text())
    assert pickle.loads(pickle.dumps(topo)).source() == (copy, source.read_text())
    old = pickle.loads(pickle.dumps(topo))
    object.__setattr__(old, "__pydantic_private__", None)  # as pickled before the attributes
    monkeypatch.setenv("INFRA_TOPOLOGY", str(source))
    assert old.source_file() == source
    assert old.source() == (source, source.read_text())
